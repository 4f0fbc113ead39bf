"""``query_mask``: ``MaskQuery`` reaches the attention logits.

1. ``MaskQuery(scale=0)`` must give exactly uniform attention over the keys the head may
   attend: causal, and within the sliding window on sliding layers (``config.layer_types``,
   else ``config.sliding_window`` on every layer; HF's window keeps keys with
   ``q - k < window``). The allowed set is cross-checked against the raw model itself: its own
   attention has no mass outside the set, and its attention with the post-norm query zeroed is
   uniform over the set; otherwise the check is NOT CHECKED.
2. ``MaskQuery(scale=0.1)`` must equal scaling the raw model's *post-norm* query (the output of
   QK-norm where the model has one: a scale before the norm would be undone by it): patterns
   of every head of the sampled layers and all logits.
"""

from __future__ import annotations

import torch

from headscope.interventions import MaskQuery
from headscope.trace import trace
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext, compare, worst
from headscope.verify.outcomes import NotChecked, reference
from headscope.verify.raw_run import raw_forward

SCALE = 0.1


def sliding_window(config: object, layer: int) -> int | None:
    """The layer's sliding window from the HF config, or None for global attention."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        kind = types[layer]
        if kind not in ("sliding_attention", "full_attention"):
            raise NotChecked(f"layer type {kind!r} has no known key set")
        return int(window) if kind == "sliding_attention" and window else None
    if window and getattr(config, "use_sliding_window", True) is not False:
        return int(window)
    return None


def allowed_keys(config: object, layer: int, n_pos: int) -> torch.Tensor:
    """(q_pos, k_pos) bool: causal and within the layer's sliding window."""
    q = torch.arange(n_pos).unsqueeze(1)
    k = torch.arange(n_pos).unsqueeze(0)
    allowed = k <= q
    window = sliding_window(config, layer)
    return allowed & (q - k < window) if window else allowed


def uniform(allowed: torch.Tensor) -> torch.Tensor:
    return allowed.float() / allowed.float().sum(-1, keepdim=True)


def _validated_sets(ctx: VerifyContext) -> dict[int, torch.Tensor]:
    """layer -> allowed keys, after checking them against the raw model (else NotChecked)."""
    n_pos = int(ctx.prompts.clean.shape[1])
    sets = {layer: allowed_keys(ctx.raw.config, layer, n_pos) for layer in ctx.layers}
    zeroed = raw_forward(ctx.raw, ctx.prompts.clean, attentions=True,
                         q_scale={layer: (ctx.heads_in(layer), 0.0) for layer in ctx.layers})
    for layer, allowed in sets.items():
        outside = float(ctx.raw_act(ctx.clean_run, "pattern", layer)[..., ~allowed].abs().max())
        heads = ctx.heads_in(layer)
        flat = float((zeroed.pattern[layer][:, heads].cpu() - uniform(allowed)).abs().max())
        if outside > 1e-6 or flat > ctx.rtol:
            raise NotChecked(
                f"layer {layer}: the raw model's attention disagrees with causal+window keys from the config "
                f"(mass outside {outside:.2g}, zero-query deviation from uniform {flat:.2g})"
            )
    return sets


def _uniform(ctx: VerifyContext) -> Measured:
    tr = ctx.headscope("mask 0", trace, ctx.model, ctx.prompts.clean, acts=["pattern"], layers=ctx.layers,
                       interventions=[MaskQuery(ctx.heads, scale=0.0)])
    sets = reference(_validated_sets, ctx)
    parts = [compare(tr.get("pattern", layer)[:, ctx.heads_in(layer)],
                     uniform(allowed).expand(ctx.prompts.n, len(ctx.heads_in(layer)), -1, -1))
             for layer, allowed in sets.items()]
    return worst(*parts)


def _scaled(ctx: VerifyContext) -> Measured:
    tr = ctx.headscope("mask scaled", trace, ctx.model, ctx.prompts.clean, acts=["pattern"], layers=ctx.layers,
                       interventions=[MaskQuery(ctx.heads, scale=SCALE)], keep_logits=True)
    run = reference(raw_forward, ctx.raw, ctx.prompts.clean, attentions=True,
                    q_scale={layer: (ctx.heads_in(layer), SCALE) for layer in ctx.layers})
    parts = [compare(tr.get("pattern", layer), run.pattern[layer]) for layer in ctx.layers]
    return worst(*parts, compare(tr.logits, run.logits))


CHECKS = [
    CheckSpec("query_mask", "scale 0: uniform over allowed keys", _uniform),
    CheckSpec("query_mask", f"scale {SCALE}: post-norm query", _scaled),
]
