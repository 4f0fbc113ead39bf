"""``activation_patching``: exact head patching equals patching the raw model with hooks.

headscope: :func:`headscope.patching.heads.patch_all_heads` on the engine the analyzers use,
denoising (clean activation into the corrupted run), all positions, the logit difference at
END, restricted to the sampled layers. Raw side: the corrupted prompts, repeated once per
sampled unit of a layer, with copy ``i`` getting unit ``i``'s clean activation (z: a pre-hook on
the output projection; q, k, v: a hook on the projection output, k and v per KV head
``head // group``): a plain full forward, no prefix reuse or position windows. The clean and
corrupted baselines are compared too.
"""

from __future__ import annotations

import torch

from headscope.patching.engine import engine_for
from headscope.patching.heads import patch_all_heads
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import reference
from headscope.verify.raw_run import raw_forward


def per_copy(units: list[int], source: torch.Tensor, n: int):  # noqa: ANN202 - an edit
    """Edit of x (k*n, p, U, d): copy ``i`` gets ``source``'s (n, p, U, d) unit ``units[i]``."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        view = x.view(len(units), n, *x.shape[1:])
        for i, unit in enumerate(units):
            view[i, :, :, unit] = source[:, :, unit].to(x.device, x.dtype)
        return x

    return fn


def raw_patched(ctx: VerifyContext, act: str, layer: int, units: list[int]) -> torch.Tensor:
    """(len(units), n) raw metric of the corrupted run with each unit's clean ``act`` at ``layer``."""
    n, k = ctx.prompts.n, len(units)
    edit = per_copy(units, ctx.raw_act(ctx.clean_run, act, layer), n)
    tokens = ctx.prompts.corrupted.repeat(k, 1)
    run = raw_forward(ctx.raw, tokens, z_edit={layer: edit} if act == "z" else None,
                      proj_edit=None if act == "z" else {(act, layer): edit})
    return torch.stack([ctx.metric(run.logits[i * n : (i + 1) * n]) for i in range(k)])


def _check(act: str):  # noqa: ANN202 - a check function
    def fn(ctx: VerifyContext) -> Measured:
        batch = reference(ctx.batch)
        engine = ctx.headscope("engine", engine_for, ctx.model, batch)
        res = ctx.headscope(f"patch {act}", patch_all_heads, engine, batch.clean, batch.corrupted, act,
                            None, ctx.layers)
        parts = [
            compare(res.clean, ctx.metric(ctx.ref("clean_run").logits)),
            compare(res.corrupted, ctx.metric(ctx.ref("corrupted_run").logits)),
        ]
        for layer in ctx.layers:
            units = sorted({h if act in ("z", "q") else h // ctx.raw.group for h in ctx.heads_in(layer)})
            want = reference(raw_patched, ctx, act, layer, units)
            parts.append(compare(res.values[layer, units, 0], want))
        return worst(*parts)

    return fn


CHECKS = [CheckSpec("activation_patching", f"{act}, all positions", _check(act)) for act in ("z", "q", "k", "v")]
