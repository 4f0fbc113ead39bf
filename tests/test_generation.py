"""KV-cached, length-grouped greedy generation equals plain full-recompute decoding."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from headscope import load_model
from headscope.generation import greedy_generate, stop_token_ids
from headscope.interventions import MaskQuery, ZeroAblate


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-gqa")


def _reference(model, prompt: list[int], n_new: int, hooks: list) -> list[int]:
    """Decode one prompt by rerunning the whole sequence each step (no cache, no batching)."""
    stops = stop_token_ids(model.tokenizer)
    seq, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(n_new):
            logits = model.bridge.run_with_hooks(torch.tensor([seq]), fwd_hooks=hooks)
            y = int(logits[0, -1].argmax())
            if y in stops:
                break
            seq.append(y)
            out.append(y)
    return out


def _zero_head(layer: int, head: int) -> list:
    def fn(z: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return [(f"blocks.{layer}.attn.hook_z", fn)]


def _scale_query(layer: int, head: int, eps: float) -> list:
    def fn(q: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        q = q.clone()
        q[:, :, head] = q[:, :, head] * eps
        return q

    return [(f"blocks.{layer}.attn.hook_q", fn)]


def test_cached_generation_equals_full_recompute(toy) -> None:
    g = torch.Generator().manual_seed(0)
    vocab = int(toy.cfg.d_vocab)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (3, 6, 6, 9, 3, 6)]
    cases = [
        ([], []),
        ([ZeroAblate([(1, 0)])], _zero_head(1, 0)),
        ([MaskQuery([(0, 2)], scale=0.01)], _scale_query(0, 2, 0.01)),
    ]
    outputs = []
    for ivs, hooks in cases:
        got = greedy_generate(toy, prompts, max_new_tokens=6, interventions=ivs, batch_size=2)
        want = [_reference(toy, p, 6, hooks) for p in prompts]
        assert got == want
        assert all(len(x) > 0 for x in got)
        outputs.append(got)
    assert outputs[1] != outputs[0]  # the ablation changes what is generated
