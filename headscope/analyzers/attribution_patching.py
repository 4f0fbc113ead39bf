"""Attribution patching per head: a gradient estimate of activation patching for all heads from
one clean forward, one corrupted forward and one backward pass (Nanda 2023; Syed et al. 2023).

``score = sum_{pos, d} (z_clean - z_corr) * dM/dz |_corrupted``, averaged over prompts and
normalised like activation patching by ``(clean - corrupted)`` of the metric, so it estimates
the normalised denoising patch of each head. ``compare_exact=True`` also runs exact patching
(:mod:`headscope.analyzers.activation_patching`) at the same positions -- all positions at
once, or each named position of the task (``positions="named"``) -- and records an ``exact``
column and the Spearman rank correlation between the two in provenance
(``choices.rank_correlation_with_exact``: a number for ``all``, ``{position: number}`` for
``named``; None where either side is constant, e.g. exact patching at a position no later
component reads).

Reference: Nanda's attribution-patching demo (``TransformerLensOrg/TransformerLens``,
``demos/Attribution_Patching_Demo.ipynb``: ``get_cache_fwd_and_bwd`` caches the corrupted run's
gradients; the per-head ``z`` attribution is ``(clean - corrupted) * corrupted_grad`` summed
over d_head and positions). Preset ``paper``: ``act=z``, ``positions=all``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.patching.attribution import attribution_scores, rank_correlation
from headscope.patching.engine import engine_for
from headscope.patching.heads import patch_all_heads
from headscope.results import HeadScores, build_provenance
from headscope.tasks.contrastive import contrastive_batch
from headscope.tasks.protocols import ContrastiveTask


@register_analyzer(
    "attribution_patching",
    summary="gradient (attribution) patching of every head in one backward pass; rank-checked vs exact",
    requires=ContrastiveTask,
    presets={"paper": {"act": "z", "positions": "all"}},
)
def attribution_patching(
    model: Any,
    task: Any,
    act: str = "z",
    positions: str = "all",
    compare_exact: bool = False,
    progress: bool = False,
) -> HeadScores:
    """Attribution-patching scores for every head.

    Args:
        model: a loaded :class:`headscope.models.Model`.
        task: a contrastive task.
        act: ``z``, ``q``, ``k`` or ``v`` (k/v per KV head under GQA).
        positions: ``all`` or ``named`` (one metric per named position).
        compare_exact: also run exact activation patching at the same positions (all, or each
            named position) and record the rank correlation.
        progress: progress bar for the exact comparison.
    """
    if act not in ("z", "q", "k", "v"):
        raise HeadscopeError(f"attribution patching supports act z, q, k or v; got '{act}'.")
    if positions not in ("all", "named"):
        raise HeadscopeError(f"positions must be 'all' or 'named'; got '{positions}'.")
    batch = contrastive_batch(model, task)
    engine = engine_for(model, batch, progress=progress)
    out = attribution_scores(engine, batch.clean, batch.corrupted, act=act)
    per_pos = out["per_position"]  # (layer, n, pos, units)
    denom = float(out["clean"].mean() - out["corrupted"].mean())
    rows = torch.arange(batch.n)
    labels = ["all"] if positions == "all" else list(batch.positions)
    per_label = {"all": per_pos.sum(2)} if positions == "all" else {
        name: per_pos[:, rows, batch.positions[name]] for name in labels
    }  # each (layer, n, units)
    heads = list(range(model.n_heads))
    unit_of = [model.kv_head(h) for h in heads] if act in ("k", "v") else heads
    kv = np.array([[model.kv_head(h) for h in heads]] * model.n_layers)
    choices: dict[str, Any] = {
        "estimate": "first-order: (clean - corrupted activation) . gradient of the metric on the corrupted run",
        "normalisation": "estimated (patched - corrupted) / (clean - corrupted) of the prompt-mean metric",
        "clean_metric": float(out["clean"].mean()),
        "corrupted_metric": float(out["corrupted"].mean()),
        "clean_fraction_correct": float((out["clean"] > 0).float().mean()),
    }
    exact: dict[str, torch.Tensor] = {}
    if compare_exact:
        with torch.inference_mode():
            res = patch_all_heads(engine, batch.clean, batch.corrupted, act=act,
                                  positions=None if positions == "all" else batch.positions)
        norm = res.normalized()  # (layer, unit, position)
        exact = {name: norm[:, :, p] for p, name in enumerate(res.position_names)}
    corr: dict[str, float | None] = {}
    parts = []
    for name, vals in per_label.items():
        score = (vals.mean(1) / denom).numpy()[:, unit_of]
        extra: dict[str, Any] = {"kv_head": kv, "n": batch.n, "position": name}
        if exact:
            extra["exact"] = exact[name].numpy()[:, unit_of]
            corr[name] = rank_correlation(torch.tensor(score), exact[name][:, unit_of])
        metric = f"{act}_attribution" if name == "all" else f"{act}_attribution@{name}"
        parts.append(HeadScores.from_matrix(score, model=model.spec, task=task.name, analyzer="attribution_patching",
                                            metric=metric, extra=extra))
    if corr:
        choices["rank_correlation_with_exact"] = corr["all"] if positions == "all" else corr
    info = task.describe()
    provenance = build_provenance(
        model, task=info, analyzer="attribution_patching",
        options={"act": act, "positions": positions, "compare_exact": compare_exact},
        choices=choices, seed=info.get("seed"),
    )
    return HeadScores.concat(parts, provenance=provenance)
