"""MAPS: parameter-only relation scores of heads (Elhelo & Geva 2024, "Inferring Functionality
of Attention Heads from their Parameters").

Each head's effective vocab-to-vocab map is ``M_h = E W_OV^h W_U`` (rows: source tokens,
columns: output tokens), with ``E`` an effective embedding (:mod:`headscope.analyzers.ov_circuit`,
which also handles the GQA mapping of ``W_V`` and folds the final norm's weight into ``W_U``).
For a relation given as (source, target) pairs (:mod:`headscope.tasks.relations`) the head's
``maps`` score is the fraction of pairs whose target is in the top ``top_k`` of row
``M_h[source]`` over the whole vocabulary (ties count against the target). ``maps_rank1`` uses
``top_k = 1``.

Choices (recorded): ``embedding`` recipe (default ``embed_mlp0``: ``W_E[t] + MLP0(W_E[t])``, the
residual a later head reads and the recipe of headscope's OV test ``ov_copying``; ``embed`` is
the raw embedding ``E`` of the MAPS paper, ``mlp0`` Gould et al.'s). On SmolLM2-135M the two
disagree for copying: ``embed_mlp0`` ranks 23.0, 23.2, 24.5 first (the OV test's top heads),
``embed`` ranks 27.3, 5.1, 29.1 first, ``ln`` (head's ``ln1`` and the final norm's weight
applied), ``top_k``, biases excluded, pairs tokenized with a leading space first, skipped
multi-token pairs counted.

:func:`salient_mappings` gives each head's "salient operation" summary: its strongest token
mappings (source -> target) among a set of source tokens, as a tidy frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from headscope.analyzers.ov_circuit import effective_embedding, iter_ov_logits
from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.results import HeadScores, build_provenance


def relation_fraction(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> tuple[float, float]:
    """(fraction of rows whose target is in the top-k, fraction where it is top-1).

    Args:
        logits: (n_pairs, d_vocab), row i for pair i's source.
        targets: (n_pairs,) target ids.
    """
    own = logits.gather(1, targets.unsqueeze(1))
    rank = (logits >= own).sum(1) - 1
    return float((rank < top_k).float().mean()), float((rank < 1).float().mean())


@register_analyzer(
    "maps",
    summary="MAPS (Elhelo & Geva 2024): fraction of relation pairs whose target is in the top-k of the head's vocab map",
    tasks=("relation",),
)
def maps(
    model: Any,
    task: Any,
    top_k: int = 10,
    embedding: str = "embed_mlp0",
    ln: bool = True,
    progress: bool = False,
) -> HeadScores:
    """MAPS relation score of every head.

    Args:
        top_k: a pair counts when its target is in the top ``top_k`` of the source's row.
        embedding: effective-embedding recipe: ``embed_mlp0`` (default), ``embed`` (MAPS paper) or ``mlp0``.
        ln: apply the norms along the path (see ``ov_circuit``).
        progress: unused; accepted for the CLI.

    Returns:
        HeadScores with metrics ``maps`` and ``maps_rank1``; ``n`` = pairs kept.
    """
    if top_k < 1:
        raise HeadscopeError("top_k must be at least 1: e.g. -o top_k=10.")
    src, tgt, skipped = task.pairs(model)
    emb = effective_embedding(model, torch.tensor(src), embedding, ln)
    tgt_t = torch.tensor(tgt)
    shape = (model.n_layers, model.n_heads)
    topk, top1 = np.zeros(shape), np.zeros(shape)
    for layer, head, logits in iter_ov_logits(model, emb, None, ln):
        topk[layer, head], top1[layer, head] = relation_fraction(logits, tgt_t.to(logits.device), top_k)
    kv = model.kv_head_matrix()
    common = {"model": model.spec, "task": task.name, "analyzer": "maps"}
    extra = {"n": len(src), "kv_head": kv}
    prov = build_provenance(
        model, task=task.describe(), analyzer="maps",
        options={"top_k": top_k, "embedding": embedding, "ln": ln},
        choices={
            "effective_embedding": embedding,
            "ln": "head's ln1 before W_V, final-norm weight before W_U" if ln else "no norms",
            "ranking": f"target among the top {top_k} of the full-vocabulary row (ties count against it)",
            "tokenization": "leading-space form first, then bare; multi-token pairs skipped",
            "pairs_kept": len(src), "pairs_skipped": skipped,
            "gqa": "query head h uses W_V of KV head h // group_size", "biases": "excluded",
        },
    )
    return HeadScores.concat(
        [HeadScores.from_matrix(topk, metric="maps", extra=extra, **common),
         HeadScores.from_matrix(top1, metric="maps_rank1", extra=extra, **common)],
        provenance=prov,
    )


def salient_mappings(
    model: Any,
    heads: Sequence[tuple[int, int]],
    source_ids: Sequence[int],
    n: int = 10,
    embedding: str = "embed_mlp0",
    ln: bool = True,
) -> pd.DataFrame:
    """Each head's strongest token mappings ("salient operations", MAPS Sec. 4).

    For every source token the row ``M_h[source]`` is standardised over the vocabulary
    (z-score), its top target is taken, and the ``n`` (source, target) pairs with the highest
    z-scores are kept.

    Returns:
        Tidy frame: layer, head, rank, source, target, source_id, target_id, zscore.
    """
    ids = torch.tensor(list(source_ids))
    emb = effective_embedding(model, ids, embedding, ln)
    dec = model.tokenizer.decode
    rows: list[dict[str, Any]] = []
    for layer, head, logits in iter_ov_logits(model, emb, None, ln, heads=list(heads)):
        z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True).clamp_min(1e-12)
        best, tgt = z.max(1)
        order = best.argsort(descending=True)[:n]
        for rank, i in enumerate(order.tolist()):
            rows.append({"layer": layer, "head": head, "rank": rank, "source": dec([int(ids[i])]),
                         "target": dec([int(tgt[i])]), "source_id": int(ids[i]), "target_id": int(tgt[i]),
                         "zscore": float(best[i])})
    return pd.DataFrame(rows)
