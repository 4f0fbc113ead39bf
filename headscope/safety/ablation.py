"""Head ablations for safety-head analysis (Zhou et al. 2024), built on :mod:`headscope.interventions`.

Kinds (``SAFETY_ABLATIONS``):

- ``query_scale`` (default, as in the paper): multiply the head's query by a small ``eps``
  (``MaskQuery(scale=eps)``), so its attention scores shrink by ``eps`` and its attention
  becomes near-uniform over the causal window. The reference code's ``scale_mask`` with
  ``scale_factor = 1e-4`` (``lib/SHIPS/get_ships.py``, ``mask_config``), :data:`PAPER_EPS`;
- ``mean_mask``: the reference code's other mask: the head's query becomes the mean query of
  all heads of its layer at each position (``MeanQuery``; ``lib/utils/custommodel.py``);
- ``mean_z``: headscope's mean ablation: replace the head's z by its mean over the *harmless*
  prompts' real (non-padding) positions (one mean per head, over prompts and positions);
- ``zero``: z = 0.

``mean`` was the old name of ``mean_z``; it is refused with a pointer to both mean kinds, since
it is easily mistaken for the paper's ``mean_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.errors import HeadscopeError, suggest
from headscope.interventions import MaskQuery, MeanAblate, MeanQuery, ZeroAblate

SAFETY_ABLATIONS: tuple[str, ...] = ("query_scale", "mean_mask", "mean_z", "zero")
PAPER_EPS = 1e-4
Head = tuple[int, int]


def check_ablation(kind: str) -> None:
    """One-line error for an unknown kind."""
    if kind == "mean":
        raise HeadscopeError(
            "ablation 'mean' is ambiguous: use 'mean_z' (z := its mean over the harmless prompts) or "
            "'mean_mask' (the paper's reference code: the head's query := its layer's mean query)."
        )
    if kind not in SAFETY_ABLATIONS:
        raise HeadscopeError(f"unknown ablation '{kind}'.{suggest(kind, SAFETY_ABLATIONS)} Choose from {', '.join(SAFETY_ABLATIONS)}.")


def masked_mean_z(model: Any, tokens: torch.Tensor, last: torch.Tensor, layers: Sequence[int], batch_size: int | None = None) -> dict[int, torch.Tensor]:
    """Mean z per layer over the real positions of right-padded prompts: layer -> (n_heads, d_head)."""
    from headscope.trace import trace

    tr = trace(model, tokens, acts=["z"], layers=sorted(set(layers)), batch_size=batch_size)
    real = (torch.arange(tokens.shape[1]).unsqueeze(0) <= last.unsqueeze(1)).float()  # (batch, pos)
    out = {}
    for layer in sorted(set(layers)):
        z = tr.get("z", layer).float().cpu()  # (batch, pos, head, d_head)
        out[layer] = (z * real[:, :, None, None]).sum((0, 1)) / real.sum()
    return out


def build_ablation(kind: str, heads: Sequence[Head], eps: float = PAPER_EPS, means: dict[int, torch.Tensor] | None = None) -> list[Any]:
    """Interventions ablating ``heads`` together (``means`` from :func:`masked_mean_z` for ``mean_z``)."""
    check_ablation(kind)
    heads = [(int(layer), int(head)) for layer, head in heads]
    if kind == "query_scale":
        return [MaskQuery(heads, scale=eps)]
    if kind == "mean_mask":
        return [MeanQuery(heads)]
    if kind == "zero":
        return [ZeroAblate(heads)]
    if means is None:
        raise HeadscopeError("mean_z ablation needs the mean z of the reference prompts.")
    out = []
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    for layer, hs in by_layer.items():
        value = means[layer][hs].reshape(1, 1, len(hs), -1)
        out.append(MeanAblate([(layer, h) for h in hs], reference=torch.zeros(1, 1, dtype=torch.long), _means={layer: value}))
    return out
