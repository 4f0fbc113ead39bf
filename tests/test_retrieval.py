"""Retrieval heads: ROUGE, the needle task, scoring and the query-masking causal check."""

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

from headscope import load_model
from headscope.analyzers import run_analyzer
from headscope.analyzers.retrieval_heads import greedy_decode, rouge1_recall
from headscope.errors import HeadscopeError
from headscope.tasks import make_task
from headscope.tasks.needle import load_needles


def test_rouge1_recall_by_hand():
    assert rouge1_recall("the cat sat", "The cat sat on the mat") == pytest.approx(3 / 6)
    assert rouge1_recall("mat mat mat", "mat mat") == 1.0  # clipped counts
    assert rouge1_recall("", "anything") == 0.0


def test_needles_are_ours_and_answerable():
    for nd in load_needles():
        assert nd["answer"].lower() in nd["needle"].lower()
        assert nd["question"].endswith("?")


def test_needle_task_rejects_bad_grid():
    with pytest.raises(HeadscopeError):
        make_task("needle", depths=[1.5])
    with pytest.raises(HeadscopeError):
        make_task("needle", context_lengths="8")


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


@pytest.mark.smollm2
def test_needle_span_and_grid(smol):
    task = make_task("needle", context_lengths="96,160", depths="0,0.5,1", seed=3)
    trials = task.trials(smol)
    assert len(trials) == 6
    for t in trials:
        a, b = t.needle_span
        assert smol.tokenizer.decode(t.tokens[0, a:b].tolist()).strip() == t.needle
        assert "<|im_start|>assistant" in smol.tokenizer.decode(t.tokens[0, -4:].tolist())


@pytest.fixture(scope="module")
def retrieval(smol):
    # all six needles at a short context (2 depths x 3 needles per cell)
    task = make_task("needle", context_lengths="96", depths="0.3,0.7", needles_per_cell=3)
    return run_analyzer("retrieval_heads", smol, task, check_masking=True, mask_k=10, n_random=2,
                        max_new_tokens=16)


@pytest.mark.smollm2
def test_smollm2_solves_short_needles_and_retrieval_heads_are_few(retrieval, smol):
    summary = retrieval.provenance["choices"]["summary"]
    assert summary["n_trials"] == 6
    # a 135M model: most, not necessarily all, of our needles are recalled at ~100 tokens
    assert summary["accuracy"] >= 4 / 6, retrieval.provenance["choices"]["trials"]
    scores = retrieval.matrix("retrieval").to_numpy()
    assert scores.shape == (smol.n_layers, smol.n_heads)
    assert 0 < (scores > 0.1).mean() < 0.15
    assert summary["fraction_heads_above_0.1"] == pytest.approx((scores > 0.1).mean())


@pytest.mark.smollm2
def test_smollm2_masking_top_heads_hurts_more_than_random(retrieval):
    check = retrieval.provenance["choices"]["causal_check"]
    assert len(check["random"]) == 2 and len(check["top_k_heads"]) == 10
    n = retrieval.provenance["choices"]["summary"]["n_trials"]
    # masking the top heads loses at least one more needle than masking random heads does on
    # average, and random masking costs at most one needle on average
    assert check["top_k_accuracy"] <= check["random_mean_accuracy"] - 1 / n + 1e-9, check
    assert check["random_mean_accuracy"] >= check["unmasked_accuracy"] - 1 / n - 1e-9, check
    assert check["top_k_accuracy"] < check["unmasked_accuracy"], check


@pytest.mark.smollm2
@pytest.mark.parametrize("prefill_chunk", [40, 0])
def test_copy_events_counted_by_hand(smol, prefill_chunk):
    """Recount one trial's copy events from full attention rows (independent of the reducer, the
    KV cache and the chunked prefill)."""
    import torch

    from headscope.trace import trace

    task = make_task("needle", context_lengths="96", depths="0.5")
    (trial,) = task.trials(smol)
    text, copied = greedy_decode(smol, trial, max_new_tokens=4, prefill_chunk=prefill_chunk)
    ids = trial.tokens
    a, b = trial.needle_span
    want = np.zeros_like(copied)
    seen = [[set() for _ in range(smol.n_heads)] for _ in range(smol.n_layers)]
    for _ in range(4):
        tr = trace(smol, ids, acts=("pattern",), keep_logits=True)
        y = int(tr.logits[0, -1].argmax())
        for layer in range(smol.n_layers):
            top = tr.get("pattern", layer)[0, :, -1].argmax(-1)
            for h in range(smol.n_heads):
                p = int(top[h])
                if a <= p < b and int(ids[0, p]) == y:
                    seen[layer][h].add(p)
        ids = torch.cat([ids, torch.tensor([[y]])], dim=1)
    want = np.array([[len(s) for s in row] for row in seen], dtype=float)
    np.testing.assert_array_equal(copied, want)
    assert text == smol.tokenizer.decode(ids[0, trial.tokens.shape[1]:].tolist(), skip_special_tokens=True)


@pytest.mark.smollm2
def test_retrieval_shards_merge_to_one_process(smol):
    """Needle trials split over 2 shards: prompt-weighted means equal the one-process scores."""
    from headscope.scale import Shard, merge_parts, run_shard

    task = make_task("needle", context_lengths="96", depths="0.3,0.7")
    full = run_analyzer("retrieval_heads", smol, task, max_new_tokens=10)
    parts = [run_shard("retrieval_heads", smol, task, Shard(i, 2), max_new_tokens=10) for i in range(2)]
    assert [len(p.provenance["choices"]["trials"]) for p in parts] == [1, 1]
    merged = merge_parts(parts)
    np.testing.assert_allclose(merged["score"].to_numpy(), full["score"].to_numpy(), rtol=0, atol=1e-6)
    assert merged["n"].tolist() == full["n"].tolist()
    assert merged.provenance["choices"]["summary"] == full.provenance["choices"]["summary"]
    assert [r["trial"] for r in merged.provenance["choices"]["trials"]] == [0, 1]
    assert full.provenance["choices"]["summary"]["n_counted"] >= 1  # the weighted mean has weight


def _user_files(tmp_path):
    import json

    import pandas as pd

    rows = [f"Row {i} says the quarry trucks leave at dawn and return at dusk with gravel." for i in range(60)]
    (tmp_path / "hay.txt").write_text("\n\n".join(rows), encoding="utf-8")
    pd.DataFrame({"body": rows, "n": range(60)}).to_parquet(tmp_path / "hay.parquet")
    needles = [{"needle": "The harbour bell was cast in Bergen in 1911.", "question": "Where was the harbour bell cast?",
                "answer": "in Bergen"}]
    (tmp_path / "needles.json").write_text(json.dumps(needles))
    return needles


def test_needle_task_user_file_errors(tmp_path):
    import json

    _user_files(tmp_path)
    bad_needles = tmp_path / "bad.json"
    cases = [
        ({"haystack": str(tmp_path / "missing.txt")}, "does not exist"),
        ({"haystack": str(tmp_path / "broken.parquet")}, "cannot be read as parquet"),
        ({"haystack": str(tmp_path / "hay.parquet")}, "no column 'text' (columns: body, n)"),
        ({"haystack": str(tmp_path / "hay.pdf")}, "has suffix '.pdf'"),
        ({"needles": str(bad_needles)}, "answer 'Oslo' is not in its needle"),
    ]
    (tmp_path / "hay.pdf").write_text("x")
    (tmp_path / "broken.parquet").write_text("not a parquet file")
    bad_needles.write_text(json.dumps([{"needle": "The bell was cast in Bergen.", "question": "Where?", "answer": "Oslo"}]))
    for kwargs, message in cases:
        with pytest.raises(HeadscopeError, match=re.escape(message)):
            make_task("needle", **kwargs)
    for content, message in [("{", "is not JSON (line 1"), ("[]", "at least one"), ('[{"needle": "x"}]', "no text 'question'")]:
        bad_needles.write_text(content)
        with pytest.raises(HeadscopeError, match=re.escape(message)):
            make_task("needle", needles=str(bad_needles))
    (tmp_path / "empty.txt").write_text("  \n ")
    with pytest.raises(HeadscopeError, match="holds no text"):
        make_task("needle", haystack=str(tmp_path / "empty.txt"))


@pytest.mark.smollm2
@pytest.mark.parametrize("suffix,column", [("txt", "text"), ("parquet", "body")])
def test_needle_task_user_haystack_and_needles(smol, tmp_path, suffix, column):
    needles = _user_files(tmp_path)
    task = make_task("needle", context_lengths="64", depths="0.5", haystack=str(tmp_path / f"hay.{suffix}"),
                     haystack_column=column, needles=str(tmp_path / "needles.json"))
    (trial,) = task.trials(smol)
    a, b = trial.needle_span
    assert smol.tokenizer.decode(trial.tokens[0, a:b].tolist()).strip() == needles[0]["needle"]
    document = smol.tokenizer.decode(trial.tokens[0, a - 20 : a].tolist())
    assert "quarry trucks" in document or "gravel" in document or "dusk" in document
    assert trial.question == needles[0]["question"]
    with pytest.raises(HeadscopeError, match="exceeds the haystack"):
        make_task("needle", context_lengths="5000", haystack=str(tmp_path / f"hay.{suffix}"), haystack_column=column).trials(smol)
