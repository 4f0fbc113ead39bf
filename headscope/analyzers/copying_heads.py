"""OV copying score: how often a head's effective OV circuit maps a token back to itself.

For each head and each token ``t`` of a token set, compute the effective OV logits
``W_U^T W_OV^h e(t)`` over the whole vocabulary (:mod:`headscope.lens.ov_circuit`) and
check whether ``t`` is among the ``top_k`` highest. The ``copying`` score is the fraction of
tokens for which it is (the "diagonal of the effective OV circuit", in the spirit of the copying
scores of Elhage et al. 2021 and Wang et al. 2022's name-copying test, here on weights alone);
``copying_rank1`` is the same with ``top_k = 1``.

Token set: the task's tokens -- the kept family tokens of ``succession`` or the distinct
non-BOS tokens of ``induction`` -- capped at ``max_tokens`` (a seeded random subset).

Choices (recorded in provenance): ``embedding`` recipe (default ``embed_mlp0``: the residual
after block 0 without attention, which is what a later head reads; ``mlp0`` is Gould et al.'s
recipe, ``embed`` the raw embedding), ``ln`` handling, ``top_k``, ranking over the whole
vocabulary, GQA mapping to the KV group's ``W_V``, biases excluded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.ov_circuit import effective_embedding, iter_ov_logits
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import PromptTask, RepeatedPromptTask, SequenceFamilyTask


def task_token_ids(model: Any, task: Any) -> list[int]:
    """Distinct token ids a task provides (``token_ids(model)`` or its prompts' tokens, no BOS)."""
    if isinstance(task, SequenceFamilyTask):
        return list(task.token_ids(model))
    if isinstance(task, PromptTask):
        toks = task.tokens(model).flatten().tolist()
        specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
        return [t for t in dict.fromkeys(toks) if t not in specials]
    raise HeadscopeError(f"task '{task.name}' provides no tokens: use --task succession or induction.")


def copying_fraction(logits: torch.Tensor, token_ids: torch.Tensor, top_k: int) -> tuple[float, float]:
    """(fraction of rows whose own token is in the top-k, fraction where it is the top-1).

    Ties are broken against the own token, so a head whose OV logits are all equal copies nothing.

    Args:
        logits: (n_tokens, d_vocab) effective OV logits, row i for input token ``token_ids[i]``.
        token_ids: (n_tokens,) ids.
    """
    own = logits.gather(1, token_ids.unsqueeze(1))  # (n, 1)
    rank = (logits >= own).sum(1) - 1  # tokens above or tied with t (ties count against t)
    return float((rank < top_k).float().mean()), float((rank < 1).float().mean())


@register_analyzer(
    "ov_copying",
    summary="OV copying score: fraction of tokens t whose effective OV circuit ranks t in its top-k",
    requires=(SequenceFamilyTask, RepeatedPromptTask),
)
def ov_copying(
    model: Any,
    task: Any,
    top_k: int = 5,
    embedding: str = "embed_mlp0",
    ln: bool = True,
    max_tokens: int = 300,
    seed: int = 0,
    progress: bool = False,
) -> HeadScores:
    """Copying score of every head from its effective OV circuit.

    Args:
        top_k: a token counts as copied when it is among the top ``top_k`` of its own OV logits.
        embedding: effective-embedding recipe (``embed_mlp0``, ``mlp0`` or ``embed``).
        ln: apply the model's norms along the path (see ``ov_circuit``).
        max_tokens: cap on the token set (seeded random subset beyond it).
        seed: seed of that subset.
        progress: unused; accepted for the CLI.

    Returns:
        HeadScores with metrics ``copying`` (top-k) and ``copying_rank1``; ``n`` = tokens.
    """
    if top_k < 1:
        raise HeadscopeError("top_k must be at least 1: e.g. -o top_k=5.")
    ids = task_token_ids(model, task)
    if len(ids) > max_tokens:
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:max_tokens]
        ids = [ids[i] for i in sorted(order.tolist())]
    tid = torch.tensor(ids, dtype=torch.long)
    emb = effective_embedding(model, tid, embedding, ln)
    shape = (model.n_layers, model.n_heads)
    topk, top1 = np.zeros(shape), np.zeros(shape)
    for layer, head, logits in iter_ov_logits(model, emb, None, ln):
        topk[layer, head], top1[layer, head] = copying_fraction(logits, tid.to(logits.device), top_k)
    kv = model.kv_head_matrix()
    common = {"model": model.spec, "task": task.name, "analyzer": "ov_copying"}
    extra = {"n": len(ids), "kv_head": kv}
    provenance = build_provenance(
        model,
        task=task.describe(),
        analyzer="ov_copying",
        options={"top_k": top_k, "embedding": embedding, "ln": ln, "max_tokens": max_tokens, "seed": seed},
        choices={
            "effective_embedding": embedding,
            "ln": "block-0 ln2 before MLP0, head's ln1 before W_V, final-norm weight before W_U" if ln else "no norms",
            "ranking": f"own token among the top {top_k} of the full-vocabulary OV logits (ties count against t)",
            "gqa": "query head h uses W_V of KV head h // group_size",
            "biases": "b_V and b_O excluded",
            "n_tokens": len(ids),
        },
        seed=seed,
    )
    return HeadScores.concat(
        [HeadScores.from_matrix(topk, metric="copying", extra=extra, **common),
         HeadScores.from_matrix(top1, metric="copying_rank1", extra=extra, **common)],
        provenance=provenance,
    )
