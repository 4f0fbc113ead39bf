"""Activation patching per head (exact), on any contrastive task.

For each head, the clean run's activation (``act``: z = head output, q, k, v or pattern) is
patched into the corrupted run, at all positions or per position, and the task metric (default:
logit difference at END) is read. Scores are normalised as
``(patched - corrupted) / (clean - corrupted)`` of the prompt-averaged metric: 1 means the
head's clean activation alone restores the clean behaviour, 0 means no effect (Wang et al.
2022; Heimersheim & Nanda 2024). The numbers equal TransformerLens
``patching.get_act_patch_attn_head_out_all_pos`` / ``..._by_pos`` on the same bridge (see
:mod:`headscope.patching.engine` for how they are computed faster).

Choices (recorded in provenance): direction = denoising (clean into corrupted); BOS as in
the task; under GQA, k and v are patched per KV head (shared by the group's query heads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.patching.engine import PATCH_ACTS, engine_for
from headscope.patching.heads import HeadPatchResult, patch_all_heads
from headscope.results import HeadScores, build_provenance
from headscope.scale.spec import by_layer
from headscope.tasks.contrastive import contrastive_batch
from headscope.tasks.protocols import ContrastiveTask

POSITION_MODES = ("all", "named", "each")


def baseline_choices(result: HeadPatchResult) -> dict[str, float]:
    """Clean/corrupted metric means and the fraction of prompts the model gets right."""
    return {
        "clean_metric": float(result.clean.mean()),
        "corrupted_metric": float(result.corrupted.mean()),
        "clean_fraction_correct": float((result.clean > 0).float().mean()),
    }


def result_to_scores(
    model: Any, task: Any, analyzer: str, result: HeadPatchResult, act: str, provenance: dict[str, Any]
) -> HeadScores:
    """One metric per position label, rows per query head (k/v: the head's KV group)."""
    norm = result.normalized().numpy()  # (layer, unit, pos)
    per_row = result.values - result.corrupted  # (layer, unit, pos, n) per-prompt effect
    denom = float(result.clean.mean() - result.corrupted.mean())
    n = per_row.shape[-1]
    stderr = (per_row.std(-1, unbiased=True) / np.sqrt(n) / abs(denom)).numpy() if n > 1 else np.zeros_like(norm)
    raw = result.mean().numpy()
    heads = list(range(model.n_heads))
    unit_of = [model.kv_head(h) for h in heads] if act in ("k", "v") else heads
    kv = np.array([[model.kv_head(h) for h in heads]] * model.n_layers)
    parts = []
    for p, name in enumerate(result.position_names):
        metric = f"{act}_patch" if name == "all" else f"{act}_patch@{name}"
        parts.append(
            HeadScores.from_matrix(
                norm[:, unit_of, p],
                model=model.spec,
                task=task.name,
                analyzer=analyzer,
                metric=metric,
                extra={"stderr": stderr[:, unit_of, p], "n": n, "kv_head": kv, "position": name,
                       "raw_metric": raw[:, unit_of, p]},
            )
        )
    return HeadScores.concat(parts, provenance=provenance)


@register_analyzer(
    "activation_patching",
    summary="exact per-head activation patching (z/q/k/v/pattern), normalised (patched-corr)/(clean-corr)",
    requires=ContrastiveTask,
    shard=by_layer("layers"),
)
def activation_patching(
    model: Any,
    task: Any,
    act: str = "z",
    positions: str = "all",
    layers: list[int] | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> HeadScores:
    """Patch each head's clean activation into the corrupted run.

    Args:
        model: a loaded :class:`headscope.models.Model`.
        task: a contrastive task (``ioi``, ``facts``, ``induction_contrast``, ``user_file``).
        act: ``z`` (head output), ``q``, ``k``, ``v`` or ``pattern``.
        positions: ``all`` (all positions at once), ``named`` (each named position of the
            task, e.g. IO/S1/S2/END) or ``each`` (every absolute position).
        layers: layers to sweep (default all).
        max_rows: rows per batched forward (default: from a 2 GiB activation budget).
        progress: show a progress bar.

    Returns:
        HeadScores, one metric per position label (``z_patch``, ``z_patch@S2``, ...):
        ``score`` normalised, ``raw_metric`` the patched metric, ``stderr`` over prompts.
    """
    if act not in PATCH_ACTS:
        raise HeadscopeError(f"unknown act '{act}': choose from {', '.join(PATCH_ACTS)}.")
    if positions not in POSITION_MODES:
        raise HeadscopeError(f"positions must be one of {', '.join(POSITION_MODES)}; got '{positions}'.")
    batch = contrastive_batch(model, task)
    spec: Any = None if positions == "all" else ("each" if positions == "each" else batch.positions)
    engine = engine_for(model, batch, max_rows=max_rows, progress=progress)
    with torch.inference_mode():
        result = patch_all_heads(engine, batch.clean, batch.corrupted, act=act, positions=spec, layers=layers)
    info = task.describe()
    provenance = build_provenance(
        model,
        task=info,
        analyzer="activation_patching",
        options={"act": act, "positions": positions, "layers": layers, "max_rows": max_rows},
        choices={
            "direction": "denoising: clean activation patched into the corrupted run",
            "normalisation": "(patched - corrupted) / (clean - corrupted) of the prompt-mean metric",
            "metric": "logit difference logit[answer] - logit[wrong] at END",
            "gqa_kv": "k and v patched per KV head (all query heads of the group change)",
            "engine": "exact: batched slices, layer-prefix reuse, END-group windows, shared-token-prefix KV reuse",
            "bos": bool(model.bos_token_id is not None and int(batch.clean[0, 0]) == model.bos_token_id),
            **baseline_choices(result),
        },
        seed=info.get("seed"),
    )
    return result_to_scores(model, task, "activation_patching", result, act, provenance)
