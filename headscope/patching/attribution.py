"""Attribution patching: a first-order (gradient) estimate of activation patching.

``attr[l, h] = sum_{pos, d} (z_clean - z_corrupted)[l, pos, h, d] * d metric / d z[l, pos, h, d]``
with the gradient taken on the corrupted run (Nanda 2023, "Attribution patching"; Syed et al.
2023). This estimates the denoising activation patch ``metric(patched) - metric(corrupted)``
of every head at once from one clean forward, one corrupted forward and one backward pass.

The gradient is taken with ``torch.autograd.grad`` with respect to the z tensors as they
flow through the model (non-leaf tensors kept by the hook), so paths through later heads are
included; the residual entering block 0 is the only leaf, and no parameter gradients are
computed.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.patching.baselines import check_gap
from headscope.patching.engine import PatchEngine, hook_alias


def attribution_scores(
    engine: PatchEngine,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    act: str = "z",
    clean_z: dict[int, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradient estimates of per-head patching effects.

    Args:
        engine: a :class:`PatchEngine` (its END positions and metric are used).
        clean_tokens, corrupted_tokens: (n, pos).
        act: ``z`` (head output), ``q`` or ``v``... any of the engine's per-head acts.
        clean_z: cached clean activations per layer (computed if not given).

    Returns:
        dict with ``per_position`` (n_layers, n, pos, n_units) summed over d_head (row-wise
        contributions to the prompt-mean metric change), ``clean`` and ``corrupted`` (n,) metric
        values of the two runs.
    """
    model = engine.model
    layers = list(range(model.n_layers))
    if clean_z is None:
        cache = engine.cache_run(clean_tokens, acts=(act,))
        clean_z = {layer: cache.acts[(act, layer)] for layer in layers}
        clean_metric = engine.metric(cache.end_logits)
    else:
        clean_metric = torch.full((engine.n,), float("nan"))
    kept: dict[int, torch.Tensor] = {}

    def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.detach().requires_grad_(True)

    def keep(layer: int):
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            # return a fresh view: with a None return the bridge may carry on with a tensor
            # other than the one the hook saw, and the gradient would not reach ``kept``
            kept[layer] = x.view_as(x)
            return kept[layer]

        return fn

    hooks = [(hook_alias("resid_pre", 0), leaf)] + [(hook_alias(act, layer), keep(layer)) for layer in layers]
    with torch.enable_grad():
        logits = engine._run(corrupted_tokens.to(model.device), 0, hooks, k=1, from_tokens=True)
        per_row = engine.metric(logits)
        grads = torch.autograd.grad(per_row.mean(), [kept[layer] for layer in layers])
    per_position = torch.stack(
        [((clean_z[layer] - kept[layer].detach()) * g).sum(-1) for layer, g in zip(layers, grads, strict=True)]
    )  # (layer, n, pos, units) — sums to the prompt-mean metric change
    if not torch.isnan(clean_metric).all():
        check_gap(clean_metric.detach(), per_row.detach())
    return {
        "per_position": per_position.detach().float().cpu() * engine.n,
        "clean": clean_metric.detach().float().cpu(),
        "corrupted": per_row.detach().float().cpu(),
    }


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation of two equally-shaped tensors (:func:`headscope.stats.spearman`:
    average ranks for ties, O(n log n)).

    Returns None when either side is constant (the correlation is undefined there, e.g. exact
    patching at a position no later component reads).
    """
    from headscope.stats import spearman

    rho = spearman(a.detach().reshape(-1).double().cpu().numpy(), b.detach().reshape(-1).double().cpu().numpy(),
                   min_pairs=2)
    return None if rho != rho else rho
