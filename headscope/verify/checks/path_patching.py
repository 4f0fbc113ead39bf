"""``path_patching``: sender -> logits path patching equals the raw model with frozen heads.

headscope: :func:`headscope.patching.paths.path_patch` with receivers ``resid`` (the logits)
for the sampled senders' layers. Raw side (Wang et al. 2022, Appendix B): the clean prompts,
repeated once per sampled sender of a layer, with every head's z (a pre-hook on every output
projection) frozen to its clean value, except copy ``i``'s sender ``i``, set to its corrupted
value; MLPs and norms are recomputed; the logit difference at END.
"""

from __future__ import annotations

import torch

from headscope.patching.engine import engine_for
from headscope.patching.paths import Receivers, path_patch
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import reference
from headscope.verify.raw_run import raw_forward


def _frozen(clean: torch.Tensor, senders: list[int] | None, corrupted: torch.Tensor | None):  # noqa: ANN202
    """Edit of z (k*n, p, H, d): every head := clean; copy ``i``'s ``senders[i]`` := corrupted."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        k = z.shape[0] // clean.shape[0]
        view = z.view(k, *clean.shape)
        view[:] = clean.to(z.device, z.dtype)
        for i, sender in enumerate(senders or []):
            view[i, :, :, sender] = corrupted[:, :, sender].to(z.device, z.dtype)
        return z

    return fn


def raw_path(ctx: VerifyContext, layer: int, senders: list[int]) -> torch.Tensor:
    """(len(senders), n) raw metric with each sender corrupted and every other head frozen clean."""
    n, k = ctx.prompts.n, len(senders)
    edits = {}
    for lay in range(ctx.raw.n_layers):
        clean = ctx.raw_act(ctx.clean_run, "z", lay)
        corrupted = ctx.raw_act(ctx.corrupted_run, "z", lay) if lay == layer else None
        edits[lay] = _frozen(clean, senders if lay == layer else None, corrupted)
    logits = raw_forward(ctx.raw, ctx.prompts.clean.repeat(k, 1), z_edit=edits).logits
    return torch.stack([ctx.metric(logits[i * n : (i + 1) * n]) for i in range(k)])


def _check(ctx: VerifyContext) -> Measured:
    batch = reference(ctx.batch)
    engine = ctx.headscope("engine", engine_for, ctx.model, batch)
    res = ctx.headscope("path", path_patch, engine, batch.clean, batch.corrupted, Receivers(), ctx.layers)
    return worst(*[compare(res.values[layer, ctx.heads_in(layer)], reference(raw_path, ctx, layer, ctx.heads_in(layer)))
                   for layer in ctx.layers])


CHECKS = [CheckSpec("path_patching", "sender -> logits", _check)]
