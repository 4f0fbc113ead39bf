"""Long-context memory (issue 14): no n x n pattern outlives its layer; chunked prefill bounds the
attention rows. Checked with torch forward hooks on the wrapped Hugging Face attention modules and
the garbage collector's view of live tensors, not with headscope's own bookkeeping."""

from __future__ import annotations

import gc
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import headscope
from headscope.analyzers.retrieval_heads import prefill
from headscope.trace import Reducer, last_query_argmax, trace


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-gqa")


def _square_patterns(n: int, n_heads: int) -> int:
    """Live tensors shaped like a full (batch, heads, n, n) attention pattern."""
    count = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.ndim == 4 and obj.shape[1] == n_heads and obj.shape[-2:] == (n, n):
                count += 1
        except Exception:  # noqa: BLE001,S112 - objects that fail isinstance/shape checks are not tensors
            continue
    return count


def test_no_full_pattern_outlives_its_layer(toy):
    """While layer 1's query is computed, no (heads, n, n) tensor from layer 0 is alive."""
    n = 37
    tokens = torch.randint(1, toy.cfg.d_vocab, (1, n), generator=torch.Generator().manual_seed(0))
    seen: dict[int, int] = {}

    def probe(q: torch.Tensor, ctx) -> torch.Tensor:  # noqa: ANN001 - fires at each layer's hook_q
        gc.collect()
        seen[ctx.layer] = _square_patterns(n, toy.n_heads)
        return q[:, :1, :, :1].transpose(1, 2).reshape(1, -1)

    tr = trace(toy, tokens, reducers=[last_query_argmax("top1"), Reducer("probe", "q", probe)])
    assert tr.reduced("top1").shape == (1, toy.n_layers, toy.n_heads)
    assert seen == {layer: 0 for layer in range(toy.n_layers)}
    # the probe does see a pattern that is kept: a reducer holding the whole pattern
    seen.clear()
    trace(toy, tokens, reducers=[Reducer("hold", "pattern", lambda p, ctx: p.clone()), Reducer("probe", "q", probe)])
    assert seen[toy.n_layers - 1] >= 1


def test_chunked_prefill_bounds_the_attention_rows(toy):
    """Every prefill forward's attention weights are (heads, <= chunk, keys so far)."""
    n, chunk = 40, 6
    gen = torch.Generator().manual_seed(1)
    prefill(toy, torch.randint(1, toy.cfg.d_vocab, (1, 20), generator=gen), 5)  # spend the tracer's decode checks
    shapes: list[tuple[int, ...]] = []
    handles = [block.attn.register_forward_hook(  # the bridge's attention module: (output, weights)
        lambda mod, args, out: shapes.append(tuple(out[1].shape)) if isinstance(out, tuple) and out[1] is not None else None)
        for block in toy.bridge.blocks]
    try:
        tokens = torch.randint(1, toy.cfg.d_vocab, (1, n), generator=gen)
        cache = prefill(toy, tokens, chunk)
    finally:
        for h in handles:
            h.remove()
    assert int(cache.get_seq_length()) == n
    assert shapes and max(s[2] for s in shapes) == chunk
    assert sorted({s[3] for s in shapes}) == list(range(chunk, n + 1, chunk)) + ([n] if n % chunk else [])
    # the cache equals a one-pass prefill's (keys of layer 0)
    one = prefill(toy, tokens, 0)
    torch.testing.assert_close(cache.layers[0].keys, one.layers[0].keys, atol=1e-5, rtol=1e-5)
