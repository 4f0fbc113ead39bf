"""The tracer against independent computations (TransformerLens's own cache, hand-written hooks)."""

from __future__ import annotations

import math

import pytest
import torch

import headscope as hs
from headscope.errors import HeadscopeError
from headscope.interventions import (
    MaskQuery,
    MeanAblate,
    ResampleAblate,
    ZeroAblate,
    run_with_interventions,
)
from headscope.trace import TracerError, last_query_argmax, last_query_row, offset_mass


@pytest.fixture(scope="module")
def tokens(toy_gqa) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, toy_gqa.d_vocab, (5, 9), generator=g)


@pytest.fixture(scope="module")
def tl_cache(toy_gqa, tokens):
    with torch.no_grad():
        _, cache = toy_gqa.bridge.run_with_cache(tokens)
    return cache


def test_shapes_and_equality_with_run_with_cache(toy_gqa, tokens, tl_cache) -> None:
    tr = hs.trace(toy_gqa, tokens, acts=["q", "k", "v", "z", "scores", "pattern", "result"])
    b, p, d = tokens.shape[0], tokens.shape[1], toy_gqa.d_head
    for layer in range(toy_gqa.n_layers):
        assert tr.get("q", layer).shape == (b, p, 4, d)
        assert tr.get("k", layer).shape == (b, p, 4, d)  # expanded to query heads
        assert tr.get("pattern", layer).shape == (b, 4, p, p)
        assert tr.get("result", layer).shape == (b, p, 4, toy_gqa.d_model)
        torch.testing.assert_close(tr.get("pattern", layer), tl_cache[f"blocks.{layer}.attn.hook_pattern"], rtol=0, atol=0)
        torch.testing.assert_close(tr.get("z", layer), tl_cache[f"blocks.{layer}.attn.hook_z"], rtol=0, atol=0)
    assert tr.stack("pattern").shape == (b, 2, 4, p, p)


def test_gqa_mapping_reproduces_the_attention(toy_gqa, tokens, tl_cache) -> None:
    """Recompute each query head's pattern from rotated q and the KV head the tracer says it reads."""
    tr = hs.trace(toy_gqa, tokens, acts=["k"], expand_kv=False)
    assert tr.get("k", 0).shape[2] == 2  # raw KV heads
    p = tokens.shape[1]
    causal = torch.triu(torch.ones(p, p, dtype=torch.bool), 1)
    for layer in range(2):
        rot_q = tl_cache[f"blocks.{layer}.attn.hook_rot_q"]
        rot_k = tl_cache[f"blocks.{layer}.attn.hook_rot_k"]
        for h in range(4):
            kv = tr.kv_head_of[h]
            scores = torch.einsum("bqd,bkd->bqk", rot_q[:, :, h], rot_k[:, :, kv]) / math.sqrt(toy_gqa.d_head)
            pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
            torch.testing.assert_close(pattern, tl_cache[f"blocks.{layer}.attn.hook_pattern"][:, h], atol=1e-5, rtol=1e-4)
    expanded = hs.trace(toy_gqa, tokens, acts=["k"])
    for h in range(4):
        assert torch.equal(expanded.get("k", 1)[:, :, h], tr.get("k", 1)[:, :, h // 2])


def test_result_sums_to_attention_output(toy_gqa, tokens, tl_cache) -> None:
    tr = hs.trace(toy_gqa, tokens, acts=["result"])
    for layer in range(2):
        b_o = toy_gqa.bridge.blocks[layer].attn.b_O
        total = tr.get("result", layer).sum(2) + (b_o if b_o is not None else 0)
        torch.testing.assert_close(total, tl_cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5, rtol=1e-4)


def test_selection_reducers_and_batching(toy_gqa, tokens, tl_cache) -> None:
    tr = hs.trace(toy_gqa, tokens, acts=["pattern"], layers=[1], heads=[3, 0],
                  reducers=[offset_mass(1), last_query_row(), last_query_argmax()], batch_size=2)
    full = tl_cache["blocks.1.attn.hook_pattern"][:, [3, 0]]
    torch.testing.assert_close(tr.get("pattern", 1), full)
    manual = torch.stack([full[:, :, q, q - 1] for q in range(1, tokens.shape[1])], -1).mean(-1)
    torch.testing.assert_close(tr.reduced("offset_mass_1")[:, 0], manual)
    torch.testing.assert_close(tr.reduced("last_query_row")[:, 0], full[:, :, -1])
    assert torch.equal(tr.reduced("last_query_argmax")[:, 0], full[:, :, -1].argmax(-1))
    with pytest.raises(TracerError, match="not traced"):
        tr.get("pattern", 0)


def test_bad_requests_are_one_line_errors(toy_gqa, tokens) -> None:
    with pytest.raises(HeadscopeError, match="unknown activation"):
        hs.trace(toy_gqa, tokens, acts=["attn"])
    with pytest.raises(HeadscopeError, match="out of range"):
        hs.trace(toy_gqa, tokens, acts=["z"], heads=[7])
    with pytest.raises(HeadscopeError, match="context"):
        hs.trace(toy_gqa, torch.ones(1, toy_gqa.n_ctx + 1, dtype=torch.long), acts=["z"])


def test_missing_hooks_fail_loudly(toy_gqa, tokens, monkeypatch) -> None:
    """An attention implementation that skips pattern hooks must not pass silently."""
    bridge = toy_gqa.bridge
    monkeypatch.setattr(bridge, "run_with_hooks", lambda batch, fwd_hooks=(), **kw: bridge(batch))
    with pytest.raises(TracerError, match="did not fire"):
        hs.trace(toy_gqa, tokens, acts=["pattern"])


# ---------------------------------------------------------------- interventions vs hand hooks
def _hand(model, tokens, hooks):
    with torch.no_grad():
        return model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)


def test_zero_and_mean_ablation_equal_hand_hooks(toy_gqa, tokens, tl_cache) -> None:
    def zero(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    ours = run_with_interventions(toy_gqa, tokens, [ZeroAblate([(1, 2)])])
    torch.testing.assert_close(ours, _hand(toy_gqa, tokens, [("blocks.1.attn.hook_z", zero)]))

    ref = tokens.flip(0)
    with torch.no_grad():
        _, ref_cache = toy_gqa.bridge.run_with_cache(ref)
    mean = ref_cache["blocks.0.attn.hook_z"][:, :, 1].mean((0, 1))

    def mean_hook(z, hook):
        z = z.clone()
        z[:, 3, 1] = mean
        return z

    ours = run_with_interventions(toy_gqa, tokens, [MeanAblate([(0, 1)], positions=torch.tensor([3]), reference=ref)])
    torch.testing.assert_close(ours, _hand(toy_gqa, tokens, [("blocks.0.attn.hook_z", mean_hook)]))

    def resample(z, hook):
        z = z.clone()
        z[:, :, 0] = ref_cache["blocks.1.attn.hook_z"][:, :, 0]
        return z

    ours = run_with_interventions(toy_gqa, tokens, [ResampleAblate([(1, 0)], source_tokens=ref)], batch_size=2)
    torch.testing.assert_close(ours, _hand(toy_gqa, tokens, [("blocks.1.attn.hook_z", resample)]))


def test_query_mask_gives_uniform_attention(toy_gqa, tokens) -> None:
    tr = hs.trace(toy_gqa, tokens, acts=["pattern"], layers=[1], interventions=[MaskQuery([(1, 1)])])
    pat = tr.get("pattern", 1)
    p = tokens.shape[1]
    uniform = torch.tril(torch.ones(p, p)) / torch.arange(1, p + 1).unsqueeze(1)
    torch.testing.assert_close(pat[:, 1], uniform.expand_as(pat[:, 1]))
    assert not torch.allclose(pat[:, 0], uniform.expand_as(pat[:, 0]))  # neighbours untouched
