"""Head ablations, query masking and Ships' query scaling equal raw HF hooks.

Ablations edit z at the input of the attention output projection. Query masking and query
scaling must act on the query the scores are computed from: after QK-norm where the family
has one (Qwen3, Gemma-3 per head; OLMo-2 over all heads jointly), so the raw reference scales
the ``q_norm`` output (elsewhere the q projection; scaling commutes with RoPE).
"""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.analyzers.ships import single_head_kls
from headscope.interventions import (
    MaskQuery,
    MeanAblate,
    ResampleAblate,
    ZeroAblate,
    run_with_interventions,
)

from .conftest import REFUSED, assert_close


def _heads(raw) -> list[tuple[int, int]]:
    """Two heads in the first layer, one in every later layer (different head indices)."""
    return [(0, 0), (0, 3)] + [(layer, (layer + 1) % raw.n_heads) for layer in range(1, raw.n_layers)]


def _by_layer(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


def _set_heads(heads: list[int], value: torch.Tensor):  # noqa: ANN202
    """z edit: the heads' z := ``value`` (broadcastable to (b, p, H, d)) at every position."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        z[:, :, heads] = value[..., heads, :]
        return z

    return fn


@pytest.mark.capability("ablation_{kind}")
@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation(family, kind, pair, prompts, hs_call):
    raw, tokens = pair.raw, prompts.batch.clean
    heads = _heads(raw)
    if kind == "zero":
        iv = ZeroAblate(heads)
        values = {layer: torch.zeros(1, 1, raw.n_heads, raw.d_head) for layer in _by_layer(heads)}
    elif kind == "mean":  # mean over reference examples and positions
        iv = MeanAblate(heads, reference=prompts.reference)
        ref = raw.run(prompts.reference)
        values = {layer: ref.z[layer].mean((0, 1), keepdim=True) for layer in _by_layer(heads)}
    else:  # resample: the heads' z on the corrupted prompts, row by row
        iv = ResampleAblate(heads, source_tokens=prompts.batch.corrupted)
        src = raw.run(prompts.batch.corrupted)
        values = {layer: src.z[layer] for layer in _by_layer(heads)}
    logits = hs_call(lambda: run_with_interventions(pair.hs, tokens, [iv]))
    if logits is REFUSED:
        return
    edits = {layer: _set_heads(hl, values[layer]) for layer, hl in _by_layer(heads).items()}
    assert_close(logits, raw.run(tokens, z_edit=edits).logits, f"logits with {kind}-ablated heads {heads}")


def allowed_keys(n_pos: int, window: int | None) -> torch.Tensor:
    """Hand formula: (q, k) bool, key k visible to query q (causal, and q - k < window)."""
    q = torch.arange(n_pos).unsqueeze(1)
    k = torch.arange(n_pos).unsqueeze(0)
    ok = k <= q
    return ok & (q - k < window) if window is not None else ok


@pytest.mark.capability("query_mask")
def test_query_mask_gives_uniform_attention(family, pair, prompts, hs_call):
    """MaskQuery(scale=0): the head attends uniformly to exactly the keys it may attend."""
    raw, tokens = pair.raw, prompts.plain
    heads = _heads(raw)
    tr = hs_call(lambda: hs.trace(pair.hs, tokens, acts=["pattern"], interventions=[MaskQuery(heads, scale=0.0)],
                                  keep_logits=True))
    if tr is REFUSED:
        return
    ref = raw.run(tokens, q_post_scale={layer: (hl, 0.0) for layer, hl in _by_layer(heads).items()}, attentions=True)
    plain = raw.run(tokens, attentions=True)
    n_pos = tokens.shape[1]
    for layer, hl in _by_layer(heads).items():
        ok = allowed_keys(n_pos, raw.sliding_window(layer))
        # the hand formula is the raw model's own mask: its unmasked pattern is positive exactly there
        assert torch.equal(plain.pattern[layer] > 0, ok.expand_as(plain.pattern[layer])), f"mask formula, layer {layer}"
        uniform = ok.float() / ok.sum(-1, keepdim=True)
        for head in hl:
            assert_close(ref.pattern[layer][:, head], uniform.expand(tokens.shape[0], -1, -1), f"raw masked {layer}.{head}")
            assert_close(tr.get("pattern", layer)[:, head], uniform.expand(tokens.shape[0], -1, -1),
                         f"pattern of masked head {layer}.{head} vs uniform over {ok.sum(-1).tolist()} keys")
        assert_close(tr.get("pattern", layer), ref.pattern[layer], f"all patterns of layer {layer} (other heads untouched)")
    assert_close(tr.logits, ref.logits, "logits with masked queries")


@pytest.mark.capability("query_scale")
def test_query_scale(family, pair, prompts, hs_call):
    """MaskQuery(scale=1e-2) scales the query the scores see (after QK-norm)."""
    raw, tokens = pair.raw, prompts.plain
    heads = _heads(raw)
    tr = hs_call(lambda: hs.trace(pair.hs, tokens, acts=["pattern"], interventions=[MaskQuery(heads, scale=1e-2)],
                                  keep_logits=True))
    if tr is REFUSED:
        return
    ref = raw.run(tokens, q_post_scale={layer: (hl, 1e-2) for layer, hl in _by_layer(heads).items()}, attentions=True)
    for layer in range(raw.n_layers):
        assert_close(tr.get("pattern", layer), ref.pattern[layer], f"patterns of layer {layer} with heads {heads} q-scaled")
    assert_close(tr.logits, ref.logits, "logits with scaled queries")


@pytest.mark.capability("ships_query_scale")
def test_ships_query_scale(family, pair, prompts, hs_call):
    """Ships: KL(p_base || p_ablated) at each row's last token, one head's post-norm query x eps."""
    raw, batch, eps = pair.raw, prompts.batch, 1e-2
    heads = [(layer, head) for layer in range(raw.n_layers) for head in range(raw.n_heads)]
    out = hs_call(lambda: single_head_kls(pair.hs, batch.clean, batch.end, heads, ablation="query_scale", eps=eps))
    if out is REFUSED:
        return
    base, kls = out
    rows = torch.arange(batch.n)
    want_base = raw.run(batch.clean).logits[rows, batch.end].log_softmax(-1)
    assert_close(base, want_base, "base log-probabilities at the last token")
    for layer, head in heads:
        logp = raw.run(batch.clean, q_post_scale={layer: ([head], eps)}).logits[rows, batch.end].log_softmax(-1)
        want = (want_base.exp() * (want_base - logp)).sum(-1)
        assert_close(kls[(layer, head)], want, f"KL when head {layer}.{head}'s query is scaled by {eps}")
