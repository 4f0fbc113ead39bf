"""KV-cached decoding equals full recompute on the raw HF model: step logits through the
tracer's cache, and headscope's greedy decoder token for token."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.generation import greedy_generate

from .conftest import REFUSED, assert_close

MAX_NEW = 8


def raw_greedy(raw, prompt: list[int], eos: int) -> list[int]:
    """Greedy decoding by full recompute (no cache), stopping at EOS like headscope."""
    ids, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(MAX_NEW):
            y = int(raw.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if y == eos:
                break
            out.append(y)
            ids.append(y)
    return out


@pytest.mark.capability("generation")
def test_cached_decoding_equals_full_recompute(family, pair, prompts, hs_call):
    # step logits: prefill 6 tokens, then feed 6 more one at a time through the cache (beyond
    # the 4-token sliding window)
    tokens = prompts.plain
    first = hs_call(lambda: hs.trace(pair.hs, tokens[:, :6], use_cache=True))
    if first is REFUSED:
        return
    want = pair.raw.run(tokens).logits
    assert_close(first.logits, want[:, :6], "prefill logits")
    cache = first.past_key_values
    for pos in range(6, tokens.shape[1]):
        step = hs.trace(pair.hs, tokens[:, pos : pos + 1], past_key_values=cache)
        cache = step.past_key_values
        assert_close(step.logits[:, -1], want[:, pos], f"cached step logits at position {pos}")
    # greedy decoding: two prompts of one length (one batch) and a longer one
    rows = [tokens[0, :6].tolist(), tokens[1, :6].tolist(), tokens[0, :9].tolist()]
    got = greedy_generate(pair.hs, rows, max_new_tokens=MAX_NEW)
    eos = int(pair.raw.config.eos_token_id)
    expected = [raw_greedy(pair.raw, r, eos) for r in rows]
    assert got == expected, f"cached greedy {got} != full-recompute greedy {expected}"
