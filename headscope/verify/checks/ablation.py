"""``ablation``: zero, mean and resample ablation of the sampled heads equal raw z edits.

headscope: :func:`headscope.interventions.run_with_interventions` with ``ZeroAblate``,
``MeanAblate`` (mean over the corrupted prompts' examples and positions) and ``ResampleAblate``
(the corrupted prompts, row by row) on all sampled heads at once, on the clean prompts. Raw
side: a pre-hook on each sampled layer's output projection writes the same values into those
heads' z. Every logit at every position is compared.
"""

from __future__ import annotations

import torch

from headscope.interventions import MeanAblate, ResampleAblate, ZeroAblate, run_with_interventions
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare
from headscope.verify.outcomes import reference
from headscope.verify.raw_run import raw_forward


def _set(heads: list[int], value: torch.Tensor):  # noqa: ANN202 - an edit
    def fn(z: torch.Tensor) -> torch.Tensor:
        z[:, :, heads] = torch.broadcast_to(value.to(z.device, z.dtype), z[:, :, heads].shape)
        return z

    return fn


def raw_ablated(ctx: VerifyContext, kind: str) -> torch.Tensor:
    """(n, p, vocab) raw logits of the clean prompts with the sampled heads ablated."""
    edits = {}
    for layer in ctx.layers:
        heads = ctx.heads_in(layer)
        source = ctx.raw_act(ctx.corrupted_run, "z", layer)[:, :, heads]
        value = {"zero": torch.zeros(()), "mean": source.mean((0, 1), keepdim=True), "resample": source}[kind]
        edits[layer] = _set(heads, value)
    return raw_forward(ctx.raw, ctx.prompts.clean, z_edit=edits).logits


def _intervention(ctx: VerifyContext, kind: str):  # noqa: ANN202
    corrupted = ctx.prompts.corrupted
    if kind == "zero":
        return ZeroAblate(ctx.heads)
    if kind == "mean":
        return MeanAblate(ctx.heads, reference=corrupted)
    return ResampleAblate(ctx.heads, source_tokens=corrupted)


def _check(kind: str):  # noqa: ANN202 - a check function
    def fn(ctx: VerifyContext) -> Measured:
        got = ctx.headscope(f"ablate {kind}", run_with_interventions, ctx.model, ctx.prompts.clean,
                            [_intervention(ctx, kind)])
        return compare(got, reference(raw_ablated, ctx, kind))

    return fn


CHECKS = [
    CheckSpec("ablation", name, _check(kind))
    for kind, name in (("zero", "ZeroAblate"), ("mean", "MeanAblate"), ("resample", "ResampleAblate"))
]
