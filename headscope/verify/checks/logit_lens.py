"""``logit_lens``: the training-free lens in ``"residual"`` mode is the exact linear split of the logits.

headscope: :mod:`headscope.lens.core` (``lens_logits`` with the final-norm scale of the model's
residual; ``head_vectors``) and the residual split of :mod:`headscope.trace.components`.

1. Over the full vocabulary, at END: the lens logits of the components of the final residual
   (embeddings; all heads; all attention biases; all MLPs: each kind summed over layers and
   heads before the readout, which is linear, so a 135M model's 270 heads cost one readout)
   plus the constant (final-norm bias through ``W_U``, and ``b_U``) must equal the raw model's
   pre-soft-cap logits (the raw ``lm_head``).
2. Each sampled head's lens logits at every position must equal the raw reference: its write
   through the raw final norm frozen at the residual's scale, read by ``lm_head``.
"""

from __future__ import annotations

import torch

from headscope.lens.core import head_vectors, lens_logits
from headscope.models.norms import final_norm
from headscope.trace.components import residual_split
from headscope.verify.checks.dla import final_resid
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import reference
from headscope.verify.raw_linear import frozen_logits, head_writes


def _lens_total(model: object, tokens: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(n, vocab): sum over residual components of their lens logits, plus the constant."""
    split = residual_split(model, tokens, end)
    spec = final_norm(model)
    scale = spec.scale(split.final).cpu()  # (n, 1)

    def lens(parts: torch.Tensor) -> torch.Tensor:  # (n, ..., d) -> (n, ..., vocab)
        return lens_logits(model, parts, scale.view(scale.shape[0], *([1] * (parts.dim() - 1))), "residual")

    total = lens(split.embed) + lens(split.heads.sum((1, 2))) + lens(split.attn_bias.sum(1)) + lens(split.mlp.sum(1))
    w_u = model.bridge.W_U.detach().float().cpu()
    if spec.bias is not None:
        total = total + spec.bias.float().cpu() @ w_u
    b_u = getattr(model.bridge, "b_U", None)
    return total if b_u is None else total + b_u.detach().float().cpu()


def raw_head_lens(ctx: VerifyContext, layer: int, heads: list[int]) -> torch.Tensor:
    """(n, p, n_heads_sel, vocab) raw lens logits of ``heads`` at every position."""
    run = ctx.clean_run
    writes = head_writes(ctx.raw, ctx.norms, layer, ctx.raw_act(run, "z", layer),
                         ctx.raw_act(run, "attn_out", layer), heads)
    return frozen_logits(ctx.raw, ctx.norms, writes, final_resid(ctx).unsqueeze(2))


def _sum(ctx: VerifyContext) -> Measured:
    got = ctx.headscope("lens total", _lens_total, ctx.model, ctx.prompts.clean, ctx.prompts.end)
    rows = torch.arange(ctx.prompts.n)
    return compare(got, ctx.ref("clean_run").pre_cap[rows, ctx.prompts.end.to(rows.device)])


def _heads(ctx: VerifyContext) -> Measured:
    vectors, scale = ctx.headscope("lens heads", head_vectors, ctx.model, ctx.prompts.clean, ctx.heads)
    got = ctx.headscope("lens logits", lens_logits, ctx.model, vectors, scale, "residual")
    parts = []
    for layer in ctx.layers:
        idx = [i for i, (lay, _) in enumerate(ctx.heads) if lay == layer]
        parts.append(compare(got[:, :, idx], reference(raw_head_lens, ctx, layer, ctx.heads_in(layer))))
    return worst(*parts)


CHECKS = [
    CheckSpec("logit_lens", "components sum to logits", _sum),
    CheckSpec("logit_lens", "per head, every position", _heads),
]
