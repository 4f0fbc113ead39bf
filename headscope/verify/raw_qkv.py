"""Query/key/value projections of a raw HF attention module, separate or fused.

Layouts, recognised by name and validated by shape (``H`` query heads, ``KV`` key/value heads,
``d`` = d_head, ``D`` = d_model; a projection maps ``D`` to the width given):

=============  =====================  =========================================================
layout         module(s)              output
=============  =====================  =========================================================
separate       q_proj, k_proj, v_proj  ``H*d``, ``KV*d``, ``KV*d``
gpt2           c_attn (fused)          ``[q | k | v]``, each ``H*d`` heads-major (``KV = H``)
neox           query_key_value         per head ``[q_h | k_h | v_h]``: view ``(H, 3d)`` (``KV = H``)
phi3           qkv_proj                ``[q | k | v]``: ``H*d``, ``KV*d``, ``KV*d``
=============  =====================  =========================================================

:meth:`QKV.split` turns a projection output (b, p, width) into (b, p, units, d) per act
(units: ``H`` for q, ``KV`` for k and v); :meth:`QKV.join` puts edited parts back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTS: tuple[str, ...] = ("q", "k", "v")
FUSED_LAYOUTS: dict[str, str] = {"c_attn": "gpt2", "query_key_value": "neox", "qkv_proj": "phi3"}


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of an ``nn.Linear`` or GPT-2 ``Conv1D`` (weight (in, out), attribute ``nf``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight, nf = getattr(module, "weight", None), getattr(module, "nf", None)
    if isinstance(nf, int) and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0]), nf
    return None


@dataclass
class QKV:
    """The q/k/v projection(s) of one attention module.

    Attributes:
        layout: ``separate``, ``gpt2``, ``neox`` or ``phi3`` (see the module docstring).
        modules: act -> module (the same module for every act when fused).
        n_heads, n_kv, d_head: shape facts.
    """

    layout: str
    modules: dict[str, nn.Module]
    n_heads: int
    n_kv: int
    d_head: int

    @property
    def fused(self) -> bool:
        return self.layout != "separate"

    def units(self, act: str) -> int:
        return self.n_heads if act == "q" else self.n_kv

    def split(self, out: torch.Tensor, act: str) -> torch.Tensor:
        """The ``act`` part of ``out`` (b, p, width) as (b, p, units, d_head) (a view when possible)."""
        b, p = out.shape[:2]
        h, kv, d = self.n_heads, self.n_kv, self.d_head
        i = ACTS.index(act)
        if self.layout == "separate":
            return out.view(b, p, -1, d)
        if self.layout == "neox":
            return out.view(b, p, h, 3 * d)[..., i * d : (i + 1) * d]
        sizes = [h * d, kv * d, kv * d]
        return out.split(sizes, -1)[i].reshape(b, p, -1, d)

    def join(self, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Fused output (b, p, width) from parts (b, p, units, d) (fused layouts only)."""
        b, p = like.shape[:2]
        if self.layout == "neox":
            return torch.cat([parts[a] for a in ACTS], -1).reshape(like.shape)
        return torch.cat([parts[a].reshape(b, p, -1) for a in ACTS], -1)


def find_qkv(attn: nn.Module, d_model: int, n_heads: int, n_kv: int, d_head: int) -> QKV | None:
    """The :class:`QKV` of ``attn``, or None if no known layout fits its shapes."""
    h, kv, d = n_heads, n_kv, d_head
    sep = {a: getattr(attn, f"{a}_proj", None) for a in ACTS}
    if all(isinstance(m, nn.Module) for m in sep.values()):
        widths = {"q": h * d, "k": kv * d, "v": kv * d}
        if all(linear_dims(sep[a]) == (d_model, widths[a]) for a in ACTS):
            return QKV("separate", sep, h, kv, d)  # type: ignore[arg-type]
    for name, layout in FUSED_LAYOUTS.items():
        module = getattr(attn, name, None)
        if not isinstance(module, nn.Module):
            continue
        width = (h + 2 * kv) * d if layout == "phi3" else 3 * h * d
        if layout in ("gpt2", "neox") and kv != h:
            continue
        if linear_dims(module) == (d_model, width):
            return QKV(layout, dict.fromkeys(ACTS, module), h, kv, d)
    return None
