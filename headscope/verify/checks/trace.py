"""``trace``: the tracer's q, k, v, z and pattern equal the raw model's.

Raw side: the q/k/v projection outputs (before QK-norm and the rotary embedding; k and v per KV
head), the output projection's input (z) and ``output_attentions=True``, on the clean prompts,
for every head of the sampled layers. k and v are compared twice: as the model's KV heads
(``expand_kv=False``) and mapped to query heads (the default; query head ``h`` reads raw KV head
``h // group``, HF's ``repeat_kv`` order).
"""

from __future__ import annotations

import torch

from headscope.trace import trace
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst

ACTS = ("q", "k", "v", "z", "pattern")
WHAT = {"q": "q", "k": "k (KV heads, per query head)", "v": "v (KV heads, per query head)", "z": "z",
        "pattern": "pattern"}


def _check(act: str):  # noqa: ANN202 - a check function
    def fn(ctx: VerifyContext) -> Measured:
        model, tokens = ctx.model, ctx.prompts.clean
        tr = ctx.headscope("trace", trace, model, tokens, acts=list(ACTS), layers=ctx.layers, expand_kv=False)
        run = ctx.ref("clean_run")
        parts = [compare(tr.get(act, layer), ctx.raw_act(run, act, layer)) for layer in ctx.layers]
        if act in ("k", "v"):
            per_query = ctx.headscope("trace expanded", trace, model, tokens, acts=["k", "v"], layers=ctx.layers)
            kv_of = torch.arange(ctx.raw.n_heads) // ctx.raw.group
            parts += [compare(per_query.get(act, layer), ctx.raw_act(run, act, layer)[:, :, kv_of.to(run.logits.device)])
                      for layer in ctx.layers]
        return worst(*parts)

    return fn


CHECKS = [CheckSpec("trace", WHAT[act], _check(act)) for act in ACTS]
