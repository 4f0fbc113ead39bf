"""``ov_circuit``: the weights and embeddings OV-circuit analyses read are the raw model's.

1. :func:`headscope.lens.ov_circuit.ov_weights` of each sampled head: ``W_V`` (of the
   head's KV group under GQA) and ``W_O`` must equal the raw projections' slices (the raw
   modules applied to the identity basis; :mod:`headscope.verify.raw_linear`).
2. ``effective_embedding(..., "embed")`` of a few prompt tokens must equal what the raw model
   adds to the residual for that token alone at position 0 (the input of the first layer),
   minus any learned position embedding's row 0 (Gemma's embedding scale included).
"""

from __future__ import annotations

import torch

from headscope.lens.ov_circuit import effective_embedding, ov_weights
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import reference
from headscope.verify.raw_linear import w_o, w_v
from headscope.verify.raw_run import raw_forward

N_TOKENS = 8


def _weights(ctx: VerifyContext) -> Measured:
    parts = []
    for layer, head in ctx.heads:
        wv, wo = ctx.headscope(f"ov {layer}.{head}", ov_weights, ctx.model, layer, head)
        parts.append(compare(wv, reference(w_v, ctx.raw, layer, head // ctx.raw.group)))
        parts.append(compare(wo, reference(w_o, ctx.raw, layer, head)))
    return worst(*parts)


def raw_token_residual(ctx: VerifyContext, ids: torch.Tensor) -> torch.Tensor:
    """(k, d_model) the raw residual entering layer 0 for each token alone, less position 0's embedding."""
    run = raw_forward(ctx.raw, ids.view(-1, 1), inputs_of={"layer0": ctx.raw.layers[0]})
    resid = run.inputs["layer0"][:, 0].cpu()
    pos = ctx.raw.position_embedding()
    return resid if pos is None else resid - pos.float().cpu()


def _embedding(ctx: VerifyContext) -> Measured:
    ids = torch.unique(ctx.prompts.clean[:, 1:])[:N_TOKENS]
    got = ctx.headscope("embed", effective_embedding, ctx.model, ids, "embed")
    return compare(got, reference(raw_token_residual, ctx, ids))


CHECKS = [
    CheckSpec("ov_circuit", "W_V, W_O per head", _weights),
    CheckSpec("ov_circuit", "effective embedding", _embedding),
]
