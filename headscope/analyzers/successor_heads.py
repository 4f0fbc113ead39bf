"""Successor heads (Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention Heads
In The Wild").

Score (the paper's "succession score"). For every head compute the effective OV circuit on the
succession tokens (:mod:`headscope.lens.ov_circuit`)::

    logits_h(t) = W_U^T W_OV^h e(t),   e(t) = MLP0(W_E[t]) by default

restricted to the tokens of ``t``'s family. A pair ``t -> succ(t)`` is a success when
``succ(t)`` has the highest logit among the family's tokens (``t`` itself included). The
``succession`` metric is the accuracy over all pairs of all kept families; ``succession_<family>``
is the accuracy within one family.

Activation-based check (``activation_check=True``): on prompts of consecutive family items
("Monday Tuesday Wednesday ..."), take each head's direct logit effect at every position --
its output ``z_h W_O^h`` times the final norm's weight, times ``W_U`` restricted to the family --
and count how often the true next item ranks first among the family (metric
``dla_succession``; the final norm's per-position scale is dropped since it does not change
rankings). This checks that the weight-based finding shows up on real activations.

Choices (recorded in provenance): effective-embedding recipe and LN handling
(options ``embedding``, ``ln``); ranking among the family's tokens (not the whole vocabulary);
GQA mapping query head -> its KV group's ``W_V``; BOS prepended to check prompts when the model
does so by default; kept items per family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.lens.core import head_vectors
from headscope.lens.ov_circuit import effective_embedding, final_readout, iter_ov_logits
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import SequenceFamilyTask


def succession_accuracy(logits: torch.Tensor, fam_slices: dict[str, tuple[slice, list[tuple[int, int]]]]) -> dict[str, tuple[int, int]]:
    """Per family (hits, pairs) from one head's logits over all family tokens.

    A hit needs the successor's logit strictly above every other family token's (ties fail).

    Args:
        logits: (n_rows, n_cols) with rows and columns both the concatenated family tokens.
        fam_slices: family -> (slice into rows/cols, pairs as local (t, succ) indices).
    """
    out: dict[str, tuple[int, int]] = {}
    for name, (sl, pairs) in fam_slices.items():
        block = logits[sl, sl]
        hits = 0
        for t, s in pairs:
            others = torch.cat([block[t, :s], block[t, s + 1 :]])
            hits += int(bool(block[t, s] > others.max())) if len(others) else 1
        out[name] = (hits, len(pairs))
    return out


def _dla_check(model: Any, task: Any, fams: dict[str, Any]) -> np.ndarray:
    """(n_layers, n_heads) fraction of prompt positions where the head's direct logit effect
    ranks the true next item first among the family."""
    prompts = task.prompts(model)
    bos = [model.bos_token_id] if model.prepend_bos and model.bos_token_id is not None else []
    hits = np.zeros((model.n_layers, model.n_heads))
    total = 0
    w_u_full = model.bridge.W_U.detach().float().cpu()
    all_heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    for name, run in prompts:
        fam = fams[name]
        ids = torch.tensor([bos + [fam.ids[i] for i in run]])
        off = len(bos)
        positions = torch.arange(off, off + len(run) - 1)
        writes, _ = head_vectors(model, ids, all_heads, positions)  # (1, n_pos, L * H, d_model)
        w_u = final_readout(model, w_u_full[:, list(fam.ids)])
        targets = torch.tensor(run[1:])  # family-local index of the next item
        best = (writes[0] @ w_u).argmax(-1).view(len(run) - 1, model.n_layers, model.n_heads)
        hits += (best == targets.view(-1, 1, 1)).sum(0).numpy()
        total += len(run) - 1
    return hits / max(total, 1)


@register_analyzer(
    "successor_heads",
    summary="succession score: effective-OV accuracy at mapping t -> successor(t) within its family",
    requires=SequenceFamilyTask,
)
def successor_heads(
    model: Any,
    task: Any,
    embedding: str = "mlp0",
    ln: bool = True,
    activation_check: bool = True,
    progress: bool = False,
) -> HeadScores:
    """Succession score of every head (Gould et al. 2023).

    Args:
        model: a loaded :class:`headscope.models.Model`.
        task: a :class:`~headscope.tasks.succession.SuccessionTask`.
        embedding: ``mlp0`` (default, the paper's MLP0(W_E)), ``embed_mlp0``
            or ``embed`` (see :mod:`headscope.lens.ov_circuit`).
        ln: apply the model's norms along the path (see ``ov_circuit``).
        activation_check: also compute ``dla_succession`` on consecutive-item prompts.
        progress: unused (the weight-based score is fast); accepted for the CLI.

    Returns:
        HeadScores with metrics ``succession`` (accuracy over all pairs, ``n`` = pairs),
        ``succession_<family>`` per kept family and, optionally, ``dla_succession``.
    """
    fams = task.tokenized(model)
    all_ids: list[int] = []
    fam_slices: dict[str, tuple[slice, list[tuple[int, int]]]] = {}
    for name, fam in fams.items():
        fam_slices[name] = (slice(len(all_ids), len(all_ids) + len(fam.ids)), list(fam.pairs))
        all_ids.extend(fam.ids)
    emb = effective_embedding(model, all_ids, embedding, ln)
    shape = (model.n_layers, model.n_heads)
    per_family = {name: np.zeros(shape) for name in fams}
    overall = np.zeros(shape)
    n_pairs = sum(len(f.pairs) for f in fams.values())
    for layer, head, logits in iter_ov_logits(model, emb, all_ids, ln):
        acc = succession_accuracy(logits, fam_slices)
        for name, (hits, n) in acc.items():
            per_family[name][layer, head] = hits / n
        overall[layer, head] = sum(h for h, _ in acc.values()) / n_pairs

    kv = model.kv_head_matrix()
    common = {"model": model.spec, "task": task.name, "analyzer": "successor_heads"}
    parts = [HeadScores.from_matrix(overall, metric="succession", extra={"n": n_pairs, "kv_head": kv}, **common)]
    for name, mat in per_family.items():
        parts.append(HeadScores.from_matrix(mat, metric=f"succession_{name}",
                                            extra={"n": len(fams[name].pairs), "kv_head": kv}, **common))
    if activation_check:
        parts.append(HeadScores.from_matrix(_dla_check(model, task, fams), metric="dla_succession",
                                            extra={"kv_head": kv}, **common))
    counts = task.kept_counts(model)
    provenance = build_provenance(
        model,
        task=task.describe(),
        analyzer="successor_heads",
        options={"embedding": embedding, "ln": ln,
                 "activation_check": activation_check},
        choices={
            "effective_embedding": embedding,
            "ln": "block-0 ln2 before MLP0, head's ln1 before W_V, final-norm weight before W_U"
            if ln else "no norms",
            "ranking": "successor must have the highest logit among its family's kept tokens",
            "gqa": "query head h uses W_V of KV head h // group_size",
            "biases": "b_V and b_O excluded",
            "families_kept": counts,
            "n_pairs": n_pairs,
            "activation_check": "head's direct logit effect (z W_O * final-norm weight) @ W_U, "
            "argmax over the family, at each position of consecutive-item prompts" if activation_check else None,
        },
        seed=None,
    )
    return HeadScores.concat(parts, provenance=provenance)
