"""Head ablations and patches.

All head-output edits act on ``hook_z`` (batch, pos, head, d_head), the per-query-head mix of
values before ``W_O``: editing one query head's z changes that head's contribution only, also
under grouped-query attention (where k and v are shared by a group). ``MaskQuery`` scales the
query of one query head where the scale reaches the attention logits: ``hook_q`` (pre-RoPE)
without QK-norm, ``hook_rot_q`` (after the norm and RoPE) on QK-norm models (Qwen3, Gemma-3,
OLMo-2), whose norm would undo a scale applied to ``hook_q`` (see
:func:`headscope.models.arch.query_scale_act`).

Kinds:

- ``zero``: z = 0 (the head writes nothing but ``b_O``'s share, as in TransformerLens).
- ``mean``: z = its mean over a reference batch (over examples, and over positions unless
  ``per_position``), Wang et al. 2022.
- ``resample``: z = the head's z on another input of the same shape (e.g. the corrupted run),
  row by row.
- ``query_mask``: q = ``scale`` * q, so the attention scores shrink to ``scale`` times their
  value; ``scale=0`` gives uniform attention over the keys the head may attend (causal, and the
  sliding window on sliding-window layers; Gemma-2's soft-capping maps 0 to 0) (Wu et al.
  2024's retrieval-head masking), a small ``scale`` (e.g. 1e-4) gives near-uniform attention
  (Zhou et al. 2024's query scaling).

Positions: ``positions=None`` edits every position; otherwise a LongTensor of positions
applied to every row, or a (batch, n) LongTensor of per-row positions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.models.arch import query_scale_act
from headscope.patching.engine import hook_alias
from headscope.trace.hooks import HookFn

Head = tuple[int, int]
ABLATION_KINDS = ("zero", "mean", "resample", "query_mask")


def _by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        grouped[int(layer)].append(int(head))
    return dict(grouped)


def _position_index(positions: torch.Tensor | None, rows: int, pos: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(row_idx, pos_idx) index tensors for advanced indexing, or None for all positions."""
    if positions is None:
        return None
    p = positions.to(device)
    if p.ndim == 1:
        p = p.unsqueeze(0).expand(rows, -1)
    if p.shape[0] != rows:
        raise HeadscopeError(f"positions have {p.shape[0]} rows but the batch has {rows}.")
    r = torch.arange(rows, device=device).unsqueeze(1).expand_as(p)
    return r, p


def _check_heads(model: Any, heads: Sequence[Head]) -> None:
    if not heads:
        raise HeadscopeError("no heads to intervene on: give at least one LAYER.HEAD.")
    for layer, head in heads:
        model.check_head(int(layer), int(head))


@dataclass
class _ZEdit:
    """Shared machinery: replace z of some heads (at some positions) with a value."""

    heads: Sequence[Head]
    positions: torch.Tensor | None = None

    def prepare(self, model: Any) -> None:
        _check_heads(model, self.heads)

    def value(self, model: Any, layer: int, heads: list[int], z: torch.Tensor, batch_slice: slice) -> torch.Tensor:
        """Replacement values, broadcastable to z[:, :, heads] (batch, pos, n_heads_sel, d_head)."""
        raise NotImplementedError

    def hooks(self, model: Any, batch_slice: slice) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for layer, heads in _by_layer(self.heads).items():
            idx = torch.tensor(heads)

            def fn(z: torch.Tensor, hook: Any, layer: int = layer, heads: list[int] = heads, idx: torch.Tensor = idx) -> torch.Tensor:
                new = self.value(model, layer, heads, z, batch_slice).to(z.dtype)
                new = torch.broadcast_to(new, (z.shape[0], z.shape[1], len(heads), z.shape[3]))
                z = z.clone()
                where = _position_index(self.positions, z.shape[0], z.shape[1], z.device)
                hidx = idx.to(z.device)
                if where is None:
                    z[:, :, hidx] = new
                else:
                    r, p = where
                    z[r.unsqueeze(-1), p.unsqueeze(-1), hidx] = new[r.unsqueeze(-1), p.unsqueeze(-1), torch.arange(len(heads), device=z.device)]
                return z

            out.append((f"blocks.{layer}.attn.hook_z", fn))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "heads": [f"{layer}.{head}" for layer, head in self.heads],
            "positions": None if self.positions is None else self.positions.tolist(),
        }


@dataclass
class ZeroAblate(_ZEdit):
    """Set the heads' z to zero."""

    def value(self, model: Any, layer: int, heads: list[int], z: torch.Tensor, batch_slice: slice) -> torch.Tensor:
        return torch.zeros((), device=z.device)


@dataclass
class MeanAblate(_ZEdit):
    """Set the heads' z to their mean over ``reference`` tokens (batch, pos).

    ``per_position=True`` keeps one mean per position (reference must have the same length as
    the input); otherwise the mean is over examples and positions.
    """

    reference: torch.Tensor | None = None
    per_position: bool = False
    _means: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def prepare(self, model: Any) -> None:
        from headscope.trace import trace

        _check_heads(model, self.heads)
        if self.reference is None:
            raise HeadscopeError("mean ablation needs reference tokens (e.g. the task's corrupted prompts).")
        if self._means:
            return
        grouped = _by_layer(self.heads)
        tr = trace(model, self.reference, acts=["z"], layers=list(grouped), batch_size=16)
        for layer, heads in grouped.items():
            z = tr.get("z", layer)[:, :, heads]  # (batch, pos, n_sel, d_head)
            self._means[layer] = z.mean(0, keepdim=True) if self.per_position else z.mean((0, 1), keepdim=True)

    def value(self, model: Any, layer: int, heads: list[int], z: torch.Tensor, batch_slice: slice) -> torch.Tensor:
        mean = self._means[layer].to(z.device)
        if self.per_position and mean.shape[1] != z.shape[1]:
            raise HeadscopeError("per-position mean ablation needs reference prompts of the same length.")
        return mean


@dataclass
class PatchHeads(_ZEdit):
    """Set the heads' z to given source values: ``source[layer]`` is (batch, pos, n_heads, d_head)
    for ALL heads of that layer (row-aligned with the input)."""

    source: dict[int, torch.Tensor] = field(default_factory=dict)

    def value(self, model: Any, layer: int, heads: list[int], z: torch.Tensor, batch_slice: slice) -> torch.Tensor:
        src = self.source[layer][batch_slice][:, :, heads].to(z.device)
        if src.shape[:2] != z.shape[:2]:
            raise HeadscopeError(
                f"patch source has shape {tuple(src.shape[:2])} but the input is {tuple(z.shape[:2])}: "
                "clean and corrupted prompts must have equal shape."
            )
        return src


@dataclass
class ResampleAblate(PatchHeads):
    """Set the heads' z to their values on ``source_tokens`` (same shape as the input)."""

    source_tokens: torch.Tensor | None = None

    def prepare(self, model: Any) -> None:
        from headscope.trace import trace

        _check_heads(model, self.heads)
        if self.source_tokens is None:
            raise HeadscopeError("resample ablation needs source tokens (e.g. the corrupted prompts).")
        if not self.source:
            layers = list(_by_layer(self.heads))
            tr = trace(model, self.source_tokens, acts=["z"], layers=layers, batch_size=16)
            self.source = {layer: tr.get("z", layer) for layer in layers}


@dataclass
class _QueryEdit:
    """Shared machinery: edit the heads' queries where a query edit reaches the attention
    logits (:func:`headscope.models.arch.query_scale_act`), one hook per layer."""

    heads: Sequence[Head]

    def prepare(self, model: Any) -> None:
        _check_heads(model, self.heads)
        for layer, _ in self.heads:
            query_scale_act(model, int(layer))  # refuses where a query edit cannot reach the logits

    def edit(self, q: torch.Tensor, idx: torch.Tensor) -> None:
        """Edit ``q`` (batch, pos, head, d_head) in place at query heads ``idx``."""
        raise NotImplementedError

    def hooks(self, model: Any, batch_slice: slice) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for layer, heads in _by_layer(self.heads).items():
            idx = torch.tensor(heads)

            def fn(q: torch.Tensor, hook: Any, idx: torch.Tensor = idx) -> torch.Tensor:
                q = q.clone()
                self.edit(q, idx.to(q.device))
                return q

            out.append((hook_alias(query_scale_act(model, layer), layer), fn))
        return out


@dataclass
class MaskQuery(_QueryEdit):
    """Scale the heads' queries by ``scale`` (0: uniform attention; small: near-uniform)."""

    scale: float = 0.0
    positions: torch.Tensor | None = None

    def edit(self, q: torch.Tensor, idx: torch.Tensor) -> None:
        where = _position_index(self.positions, q.shape[0], q.shape[1], q.device)
        if where is None:
            q[:, :, idx] = q[:, :, idx] * self.scale
        else:
            r, p = where
            q[r.unsqueeze(-1), p.unsqueeze(-1), idx] = q[r.unsqueeze(-1), p.unsqueeze(-1), idx] * self.scale

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "MaskQuery",
            "heads": [f"{layer}.{head}" for layer, head in self.heads],
            "scale": self.scale,
            "positions": None if self.positions is None else self.positions.tolist(),
        }


@dataclass
class MeanQuery(_QueryEdit):
    """Replace the heads' queries by the mean query of all heads of their layer, per position.

    The ``mean_mask`` ablation of Zhou et al. 2024's reference code
    (``lib/utils/custommodel.py``, ``CustomLlamaAttention.forward``: ``query_states[:, head_idx]
    = query_states.mean(dim=1)``, before RoPE). It acts where query scaling acts
    (:func:`headscope.models.arch.query_scale_act`); RoPE is linear and shared by all heads at a
    position, so averaging before or after it is the same.
    """

    def edit(self, q: torch.Tensor, idx: torch.Tensor) -> None:
        q[:, :, idx] = q.mean(2, keepdim=True)

    def describe(self) -> dict[str, Any]:
        return {"kind": "MeanQuery", "heads": [f"{layer}.{head}" for layer, head in self.heads]}


def make_ablation(
    kind: str,
    heads: Sequence[Head],
    reference: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    scale: float = 0.0,
    per_position: bool = False,
) -> Any:
    """Build an ablation by kind name: ``zero``, ``mean``, ``resample`` or ``query_mask``.

    ``reference`` is the mean's reference batch or the resample source (corrupted) batch.
    """
    if kind == "zero":
        return ZeroAblate(heads, positions)
    if kind == "mean":
        return MeanAblate(heads, positions, reference=reference, per_position=per_position)
    if kind == "resample":
        return ResampleAblate(heads, positions, source_tokens=reference)
    if kind == "query_mask":
        return MaskQuery(heads, scale=scale, positions=positions)
    from headscope.errors import suggest

    raise HeadscopeError(f"unknown ablation kind '{kind}'.{suggest(kind, ABLATION_KINDS)} Kinds: {', '.join(ABLATION_KINDS)}.")
