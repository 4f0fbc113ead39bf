"""The tracer's q/k/v/z/pattern equal the raw HF projections, o_proj inputs and attention weights."""

from __future__ import annotations

import pytest
import torch

import headscope as hs

from .conftest import REFUSED, assert_close


@pytest.mark.capability("tracer")
def test_tracer(family, pair, prompts, hs_call):
    tokens = prompts.batch.clean
    tr = hs_call(lambda: hs.trace(pair.hs, tokens, acts=["q", "k", "v", "z", "pattern"]))
    if tr is REFUSED:
        return
    raw = pair.raw.run(tokens, attentions=True)
    kv_of = torch.arange(pair.raw.n_heads) // pair.raw.group
    for layer in range(pair.raw.n_layers):
        assert_close(tr.get("q", layer), raw.q[layer], f"q layer {layer} (pre-RoPE, pre-QK-norm projection)")
        assert_close(tr.get("k", layer), raw.k[layer][:, :, kv_of], f"k layer {layer} (expanded to query heads)")
        assert_close(tr.get("v", layer), raw.v[layer][:, :, kv_of], f"v layer {layer} (expanded to query heads)")
        assert_close(tr.get("z", layer), raw.z[layer], f"z layer {layer}")
        assert_close(tr.get("pattern", layer), raw.pattern[layer], f"pattern layer {layer}")
    raw_kv = hs.trace(pair.hs, tokens, acts=["k", "v"], expand_kv=False)
    for layer in range(pair.raw.n_layers):
        assert_close(raw_kv.get("k", layer), raw.k[layer], f"k layer {layer} (expand_kv=False)")
        assert_close(raw_kv.get("v", layer), raw.v[layer], f"v layer {layer} (expand_kv=False)")
