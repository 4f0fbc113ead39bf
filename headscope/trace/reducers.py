"""Reducers: functions that shrink an activation inside its hook.

A reducer sees one layer's activation for one batch, restricted to the selected heads, and
returns something small (per batch element and head). The tracer stores only that, so a
scorer over all layers never holds every O(pos^2) attention pattern at once.

Contract: ``fn(activation, ctx) -> Tensor`` whose first two axes are (batch, head). For
``pattern`` the activation is (batch, head, q_pos, k_pos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReduceContext:
    """What a reducer knows about the slice it reduces.

    Attributes:
        layer: the layer index.
        heads: the selected query-head indices, in the order of the head axis.
        tokens: the batch's tokens, (batch, pos).
        cache: per-batch scratch space shared by all layers (e.g. a token mask computed once).
    """

    layer: int
    heads: tuple[int, ...]
    tokens: torch.Tensor
    cache: dict


@dataclass(frozen=True)
class Reducer:
    """A named reduction of one activation kind (``act``), applied at every traced layer."""

    name: str
    act: str
    fn: Callable[[torch.Tensor, ReduceContext], torch.Tensor]


def offset_mass(offset: int, name: str | None = None) -> Reducer:
    """Mean attention from each query to the key ``offset`` positions back.

    Averaged over the queries that have such a key (``q >= offset``).

    Returns a reducer whose output is (batch, head).
    """

    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        diag = torch.diagonal(pattern, offset=-offset, dim1=-2, dim2=-1)  # (batch, head, n_q)
        return diag.mean(-1)

    return Reducer(name or f"offset_mass_{offset}", "pattern", fn)


def last_query_row(name: str = "last_query_row") -> Reducer:
    """The attention row of the last query position: (batch, head, k_pos)."""

    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        return pattern[:, :, -1, :].clone()

    return Reducer(name, "pattern", fn)


def last_query_argmax(name: str = "last_query_argmax") -> Reducer:
    """Argmax key position of the last query: (batch, head), long."""

    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        return pattern[:, :, -1, :].argmax(-1)

    return Reducer(name, "pattern", fn)


def mask_mass(
    name: str,
    make_masks: Callable[[torch.Tensor], torch.Tensor],
    normalise: bool = True,
) -> Reducer:
    """Attention mass inside several (q, k) masks at once, for every head, in one einsum.

    Args:
        name: reducer name.
        make_masks: tokens (batch, pos) -> float masks (batch, n_masks, q_pos, k_pos). Called
            once per batch and shared across layers through ``ctx.cache``.
        normalise: divide by the head's total attention mass (TransformerLens ``detect_head``
            "mul" measure), so the score is the fraction of attention inside the mask.

    Returns a reducer whose output is (batch, head, n_masks).
    """

    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        key = ("mask_mass", name)
        if key not in ctx.cache:
            ctx.cache[key] = make_masks(ctx.tokens).to(pattern.dtype)
        masks = ctx.cache[key]
        inside = torch.einsum("bhqk,bmqk->bhm", pattern, masks)
        if not normalise:
            return inside
        return inside / pattern.sum(dim=(-2, -1)).unsqueeze(-1)

    return Reducer(name, "pattern", fn)
