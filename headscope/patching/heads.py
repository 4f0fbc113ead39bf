"""Exact per-head activation patching on the :class:`PatchEngine` (denoising direction).

For every (layer, head[, position]) the clean run's activation of that head is written into
the corrupted run and the metric is read at END (Wang et al. 2022; Heimersheim & Nanda 2024,
"How to use and interpret activation patching"). The numbers equal TransformerLens
``patching.get_act_patch_attn_head_out_all_pos`` / ``..._by_pos`` (act ``z``) and the q, k, v and
pattern variants, computed as a handful of batched, truncated forwards.

Positions:

- ``None``: all positions at once (``*_all_pos``);
- ``"each"``: every absolute position separately (``*_by_pos``);
- a dict ``name -> (n,) LongTensor``: one patch per named position, at each row's own index.

Under grouped-query attention ``k`` and ``v`` exist per KV head only, so they are patched per
KV head (which changes every query head of the group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.patching.baselines import check_gap, check_layers
from headscope.patching.engine import PATCH_ACTS, Edit, PatchEngine, RunCache, shared_prefix


@dataclass
class HeadPatchResult:
    """Per-row metric values of a head-patching sweep.

    Attributes:
        values: (n_layers, n_units, n_positions, n) metric with the patch applied;
            units are query heads (KV heads for k/v).
        clean, corrupted: (n,) metric on the unpatched clean and corrupted runs.
        position_names: labels of the position axis (``["all"]`` for all positions).
    """

    values: torch.Tensor
    clean: torch.Tensor
    corrupted: torch.Tensor
    position_names: list[str]

    def mean(self) -> torch.Tensor:
        """(n_layers, n_units, n_positions) metric averaged over rows."""
        return self.values.mean(-1)

    def normalized(self) -> torch.Tensor:
        """(patched - corrupted) / (clean - corrupted) of the row-averaged metric."""
        check_gap(self.clean, self.corrupted)
        c, r = self.clean.mean(), self.corrupted.mean()
        return (self.mean() - r) / (c - r)


def _position_specs(positions: Any, n: int, pos_len: int) -> tuple[list[str], list[torch.Tensor | None]]:
    if positions is None or positions == "all":
        return ["all"], [None]
    if positions == "each":
        return [str(p) for p in range(pos_len)], [torch.full((n,), p, dtype=torch.long) for p in range(pos_len)]
    if isinstance(positions, dict):
        names = list(positions)
        return names, [positions[k].long() for k in names]
    raise HeadscopeError(f"positions must be 'all', 'each' or named positions; got {positions!r}.")


def head_masks(act: str, units: list[tuple[int, torch.Tensor | None]], n: int, pos_len: int, n_units: int) -> torch.Tensor:
    """Masks for one slice per (unit, positions) pair.

    Returns:
        bool (k, n, pos, n_units) for z/q/k/v, or (k, n, n_units, pos) for pattern.
    """
    mask = torch.zeros(len(units), n, pos_len, n_units, dtype=torch.bool)
    rows = torch.arange(n)
    for i, (unit, where) in enumerate(units):
        if where is None:
            mask[i, :, :, unit] = True
        else:
            mask[i, rows, where, unit] = True
    return mask.transpose(2, 3).contiguous() if act == "pattern" else mask


def patch_all_heads(
    engine: PatchEngine,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    act: str = "z",
    positions: Any = None,
    layers: list[int] | None = None,
    clean_cache: RunCache | None = None,
    corrupted_cache: RunCache | None = None,
) -> HeadPatchResult:
    """Patch the clean ``act`` of every head (at the given positions) into the corrupted run.

    Args:
        engine: a :class:`PatchEngine` built for these tokens' END positions and metric.
        clean_tokens, corrupted_tokens: (n, pos) of equal shape.
        act: ``z`` (head output), ``q``, ``k``, ``v`` or ``pattern``.
        positions: ``None`` (all), ``"each"`` or named positions (see module docstring).
        layers: layers to sweep (default all; others are NaN).

    Returns:
        A :class:`HeadPatchResult`.
    """
    if act not in PATCH_ACTS:
        raise HeadscopeError(f"cannot patch '{act}': choose from {', '.join(PATCH_ACTS)}.")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise HeadscopeError("clean and corrupted tokens must have the same shape for patching.")
    model = engine.model
    n, pos_len = clean_tokens.shape
    check_layers(layers, model.n_layers)
    sweep = list(range(model.n_layers)) if layers is None else sorted(set(layers))
    clean_cache = clean_cache or engine.cache_run(clean_tokens, acts=(act,), layers=sweep)
    corrupted_cache = corrupted_cache or engine.cache_run(corrupted_tokens, acts=(), layers=[])
    if not torch.equal(clean_tokens, corrupted_tokens):  # a contrastive batch (not self-patching): fail before the sweep
        check_gap(engine.metric(clean_cache.end_logits), engine.metric(corrupted_cache.end_logits))
    n_units = model.n_kv_heads if act in ("k", "v") else model.n_heads
    names, specs = _position_specs(positions, n, pos_len)
    values = torch.full((model.n_layers, n_units, len(names), n), float("nan"))
    units = [(u, p) for u in range(n_units) for p in range(len(specs))]
    prefix = shared_prefix(clean_tokens, corrupted_tokens)
    jobs = [(layer, chunk) for layer in sweep for chunk in engine.chunks(units, pos_len, "heads")]
    for layer, chunk in engine.progress_iter(jobs, f"patching {act}"):
        mask = head_masks(act, [(u, specs[p]) for u, p in chunk], n, pos_len, n_units)
        source = clean_cache.acts[(act, layer)].unsqueeze(0)
        vals, _ = engine.run_edits(layer, corrupted_cache.resid_pre[layer], [Edit(act, layer, mask, source)],
                                   k=len(chunk), base=corrupted_cache, shared_prefix=prefix)
        for i, (u, p) in enumerate(chunk):
            values[layer, u, p] = vals[i].float().cpu()
    return HeadPatchResult(
        values=values,
        clean=engine.metric(clean_cache.end_logits).float().cpu(),
        corrupted=engine.metric(corrupted_cache.end_logits).float().cpu(),
        position_names=names,
    )
