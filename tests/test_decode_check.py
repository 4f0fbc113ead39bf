"""KV-cached decoding: right on the installed transformers, and refused when it goes wrong.

References: Hugging Face's own ``generate`` on an unbridged copy of the model (greedy), and a
deliberately broken cache path (the transformers 5.24 ``cache=`` rename without headscope's
shim), which must stop the run with one line instead of returning garbage.
"""

from __future__ import annotations

import pytest
import torch

from headscope import load_model
from headscope.generation import greedy_generate
from headscope.models.compat import SHIM_ATTR
from headscope.toy import build_toy
from headscope.trace.decode_check import CHECKED_STEPS, DecodingMismatchError

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 9, 10, 11, 12, 13], [1, 20, 21, 22]]


def _hf_greedy(prompt: list[int], n_new: int) -> list[int]:
    hf, tok = build_toy("toy-gqa")
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(prompt):].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def test_cached_generation_equals_hf_generate() -> None:
    model = load_model("toy-gqa")
    got = greedy_generate(model, PROMPTS, max_new_tokens=6, batch_size=2)
    assert got == [_hf_greedy(p, 6) for p in PROMPTS]
    assert model.decode_checks_done == CHECKED_STEPS


def test_broken_cache_path_is_refused_not_scored() -> None:
    model = load_model("toy-gqa")
    for module in model.bridge.modules():  # put the transformers 5.24 bug back
        if getattr(module, SHIM_ATTR, False):
            module._forward_pre_hooks.clear()
    from headscope.models.compat import cache_kwarg_name

    if cache_kwarg_name() != "cache":
        pytest.skip("this transformers passes past_key_values, so removing the shim breaks nothing")
    with pytest.raises(DecodingMismatchError) as err:
        greedy_generate(model, PROMPTS, max_new_tokens=4)
    msg = str(err.value)
    assert "\n" not in msg and "LlamaForCausalLM" in msg and "transformers" in msg
