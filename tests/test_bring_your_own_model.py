"""Bring your own model (issue 23 #6): ``hs.from_hf``, ``hs.from_bridge``, refusals of raw
objects, and keyword options routed as the CLI routes ``-o``.

The reference for the numbers is the same zoo model loaded from its saved directory with
``hs.load_model`` (a different path: files -> AutoModel -> bridge); the scores must be equal.
"""

from __future__ import annotations

import pandas as pd
import pytest

import headscope as hs
from headscope.errors import HeadscopeError
from headscope.toy.zoo import build_zoo_hf

INDUCTION = {"n_prompts": 2, "seq_len": 6}


def _frame(scores: hs.HeadScores) -> pd.DataFrame:
    """The scores without the model column (the spec differs by construction)."""
    return pd.DataFrame(scores).drop(columns=["model"], errors="ignore").reset_index(drop=True)


@pytest.fixture(scope="module")
def from_disk() -> pd.DataFrame:
    return _frame(hs.score(hs.load_model("zoo-llama"), "induction_contrast", "activation_patching", task_params=INDUCTION))


def test_from_hf_scores_equal_loading_from_disk(from_disk: pd.DataFrame) -> None:
    hf_model, tokenizer = build_zoo_hf("llama")  # built here, in memory, never saved
    model = hs.from_hf(hf_model, tokenizer, name="my-llama")
    assert model.n_kv_heads == 2 and model.facts.family == "llama"
    got = hs.score(model, "induction_contrast", "activation_patching", task_params=INDUCTION)
    pd.testing.assert_frame_equal(_frame(got), from_disk, check_exact=True)
    assert got.provenance["model"]["spec"] == "my-llama" and got.provenance["model"]["source"] == "object"


def test_from_bridge_scores_equal_loading_from_disk(from_disk: pd.DataFrame) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tokenizer = build_zoo_hf("llama")
    bridge = TransformerBridge.boot_transformers("zoo-llama", hf_model=hf_model, tokenizer=tokenizer)
    got = hs.score(hs.from_bridge(bridge), "induction_contrast", "activation_patching", task_params=INDUCTION)
    pd.testing.assert_frame_equal(_frame(got), from_disk, check_exact=True)


def test_raw_objects_are_refused_with_the_fix() -> None:
    hf_model, tokenizer = build_zoo_hf("gpt2")
    with pytest.raises(HeadscopeError, match=r"^got a GPT2LMHeadModel object: wrap it first with hs.from_hf\(model, tokenizer\)\.$"):
        hs.load_model(hf_model)
    with pytest.raises(HeadscopeError, match=r"hs.from_hf\(model, tokenizer\)"):
        hs.score(hf_model, "induction", "pattern_scores")
    with pytest.raises(HeadscopeError, match="needs the model's tokenizer"):
        hs.from_hf(hf_model, None)
    with pytest.raises(HeadscopeError, match="from_bridge needs a TransformerBridge"):
        hs.from_bridge(hf_model)


def test_keyword_options_are_routed_like_the_cli() -> None:
    """``hs.score(model, task, n_prompts=..., seq_len=...)`` = ``task_params=`` (as ``-o``)."""
    model = hs.load_model("toy-induction")
    routed = hs.score(model, "induction", "pattern_scores", n_prompts=3, seq_len=7)
    apart = hs.score(model, "induction", "pattern_scores", task_params={"n_prompts": 3, "seq_len": 7})
    pd.testing.assert_frame_equal(_frame(routed), _frame(apart), check_exact=True)
    assert routed.provenance["task"]["n_prompts"] == 3
    with pytest.raises(HeadscopeError, match="unknown option 'n_prompt'"):
        hs.score(model, "induction", "pattern_scores", n_prompt=3)
