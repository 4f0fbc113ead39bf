"""``dla``: direct logit attribution adds up to the raw model's logit difference, head by head.

headscope: :func:`headscope.analyzers.direct_logit_attribution.direct_logit_attribution_values`
on the clean prompts (metric ``logit[answer] - logit[wrong]`` at END).

1. embed + heads + attn_bias + mlp + constant must equal the raw model's logit difference
   *before* any final soft-capping (the output of the raw ``lm_head``).
2. Each sampled head's DLA must equal the raw reference: the head's output through the raw
   output projection, the layer's post-attention norm (frozen at the attention output's
   scale) where there is one, and the raw final norm (frozen at the final residual's scale),
   read by ``lm_head`` along ``answer - wrong`` (:mod:`headscope.verify.raw_linear`).
"""

from __future__ import annotations

import torch

from headscope.analyzers.direct_logit_attribution import direct_logit_attribution_values
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import NotChecked, reference
from headscope.verify.raw_linear import frozen_logits, head_writes


def final_resid(ctx: VerifyContext) -> torch.Tensor:
    """(n, p, d_model) the raw residual entering the final norm (clean prompts)."""
    got = ctx.clean_run.inputs.get("final")
    if got is None:
        ctx.norms.need_final()
        raise NotChecked("the final norm's input was not captured")
    return got


def raw_head_dla(ctx: VerifyContext, layer: int, heads: list[int]) -> torch.Tensor:
    """(n_heads_sel, n) raw direct logit attribution of ``heads`` at END."""
    run, rows, end = ctx.clean_run, torch.arange(ctx.prompts.n), ctx.prompts.end
    z = ctx.raw_act(run, "z", layer)[rows, end]
    o = ctx.raw_act(run, "attn_out", layer)[rows, end]
    writes = head_writes(ctx.raw, ctx.norms, layer, z, o, heads)  # (n, sel, d_model)
    logits = frozen_logits(ctx.raw, ctx.norms, writes, final_resid(ctx)[rows, end].unsqueeze(1)).cpu()
    answer, wrong = ctx.answers
    return (logits[rows, :, answer] - logits[rows, :, wrong]).T


def _values(ctx: VerifyContext) -> dict[str, torch.Tensor]:
    return ctx.headscope("dla", direct_logit_attribution_values, ctx.model, reference(ctx.batch))


def _sum(ctx: VerifyContext) -> Measured:
    out = _values(ctx)
    total = out["dla"].sum((0, 1)) + out["embed"] + out["attn_bias"].sum(0) + out["mlp"].sum(0) + out["constant"]
    return compare(total, ctx.metric(ctx.ref("clean_run").pre_cap))


def _heads(ctx: VerifyContext) -> Measured:
    out = _values(ctx)
    return worst(*[compare(out["dla"][layer, ctx.heads_in(layer)], reference(raw_head_dla, ctx, layer, ctx.heads_in(layer)))
                   for layer in ctx.layers])


CHECKS = [
    CheckSpec("dla", "components sum to logit diff", _sum),
    CheckSpec("dla", "per head", _heads),
]
