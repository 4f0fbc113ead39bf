"""The all-heads pattern scorer: planted ground truth, equality with TransformerLens, SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens.head_detector import detect_head

import headscope as hs
from headscope.analyzers.pattern_scores import PATTERNS

TL_NAMES = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head",
            "induction": "induction_head"}


def _detect_head_matrix(model, texts, pattern, **kw) -> np.ndarray:
    return detect_head(model.bridge, texts, TL_NAMES[pattern], **kw).double().numpy()


def test_planted_heads_rank_first(toy_induction) -> None:
    scores = hs.score(toy_induction, "induction", task_params={"n_prompts": 6, "seq_len": 20})
    planted = toy_induction.planted
    assert scores.heads("induction", k=1) == list(planted["induction"])
    assert scores.heads("previous_token", k=1) == list(planted["previous_token"])
    ind = scores.matrix("induction")
    top = ind.loc[planted["induction"][0]]
    others = [ind.loc[layer, head] for layer in ind.index for head in ind.columns
              if (layer, head) != planted["induction"][0]]
    # [BOS] R R: only the second half can attend to an induction target, so ~0.5 is the maximum
    assert top > 0.45 and max(others) < 0.1 * top
    prev = scores.matrix("previous_token")
    assert prev.loc[planted["previous_token"][0]] > 0.9
    assert scores["stderr"].notna().all() and (scores["n"] == 6).all()
    assert set(scores.metrics) == set(PATTERNS)
    assert scores.provenance["task"]["seq_len"] == 20 and scores.provenance["choices"]["bos"] is True


@pytest.mark.parametrize("kw", [{}, {"exclude_bos": True, "exclude_current_token": True}])
def test_equals_transformer_lens_detect_head_on_toy(toy_induction, kw) -> None:
    task = hs.make_task("induction", n_prompts=3, seq_len=12, seed=5)
    scores = hs.score(toy_induction, task, **kw)
    texts = task.texts(toy_induction)
    for p in PATTERNS:
        ref = _detect_head_matrix(toy_induction, texts, p, **kw)
        np.testing.assert_allclose(scores.matrix(p).to_numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.smollm2
def test_smollm2_equals_detect_head_and_is_batch_size_invariant(smollm2) -> None:
    task = hs.make_task("induction", n_prompts=4, seq_len=24, seed=1)
    assert (smollm2.to_tokens(task.texts(smollm2)) == task.tokens(smollm2)).all()  # same tokens
    s8 = hs.score(smollm2, task, batch_size=8)
    s1 = hs.score(smollm2, task, batch_size=1)
    texts = task.texts(smollm2)
    for p in PATTERNS:
        ref = _detect_head_matrix(smollm2, texts, p)
        np.testing.assert_allclose(s8.matrix(p).to_numpy(), ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(s1.matrix(p).to_numpy(), s8.matrix(p).to_numpy(), atol=1e-5, rtol=0)


@pytest.mark.smollm2
def test_smollm2_has_a_handful_of_induction_heads(smollm2) -> None:
    scores = hs.score(smollm2, "induction", task_params={"n_prompts": 8, "seq_len": 40})
    ind = scores.matrix("induction").to_numpy()
    n_strong = int((ind > 0.2).sum())  # 0.5 is the ceiling for [BOS] R R
    assert 2 <= n_strong <= 0.1 * ind.size
    assert np.median(ind) < 0.02
    # induction heads sit after the early layers that can supply previous-token information
    layers = [layer for layer, _ in scores.heads("induction", k=5)]
    assert min(layers) >= 3
    assert scores.matrix("previous_token").to_numpy().max() > 0.7


def test_unknown_pattern_is_a_clear_error(toy_induction) -> None:
    with pytest.raises(hs.HeadscopeError, match="unknown pattern"):
        hs.score(toy_induction, "induction", patterns=["inductoin"], task_params={"n_prompts": 1})


def test_task_tokens_round_trip_and_seed(toy_induction) -> None:
    a = hs.make_task("induction", n_prompts=2, seq_len=10, seed=1).tokens(toy_induction)
    b = hs.make_task("induction", n_prompts=2, seq_len=10, seed=1).tokens(toy_induction)
    c = hs.make_task("induction", n_prompts=2, seq_len=10, seed=2).tokens(toy_induction)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 21) and (a[:, 0] == toy_induction.bos_token_id).all()
    assert torch.equal(a[:, 1:11], a[:, 11:])
    assert all(len(set(row[1:11].tolist())) == 10 for row in a)
