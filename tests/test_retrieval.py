"""Retrieval heads: ROUGE, the needle task, scoring and the query-masking causal check."""

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from headscope import load_model
from headscope.analyzers import run_analyzer
from headscope.analyzers.retrieval_heads import accumulate_copies, greedy_decode, rouge1_recall
from headscope.errors import HeadscopeError
from headscope.tasks import make_task
from headscope.tasks.needle import load_needles


def test_rouge1_recall_is_the_rouge_score_package_with_stemming():
    """The filter is Google's rouge-score (RougeScorer(['rouge1'], use_stemmer=True), target
    first), as in the reference code; checked against the package and by hand."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    responses = ["", "I don't know.", "The password is in the shed.", "It is {answer}.", "{needle}",
                 "{needle} {needle}", "The {answer}s, of course!"]
    for nd in load_needles():
        for template in responses:
            text = template.format(answer=nd["answer"], needle=nd["needle"])
            for ref in (nd["needle"], nd["answer"]):
                assert rouge1_recall(text, ref) == scorer.score(ref, text)["rouge1"].recall, (text, ref)
    # by hand: clipped unigram overlap / reference unigrams, lower-cased, Porter-stemmed
    assert rouge1_recall("the cat sat", "The cat sat on the mat") == pytest.approx(3 / 6)
    assert rouge1_recall("mat mat mat", "mat mat") == 1.0
    assert rouge1_recall("", "anything") == 0.0
    assert rouge1_recall("Cats were sitting", "the cat sits") == pytest.approx(2 / 3)  # cats->cat, sitting/sits->sit


def test_reference_scoring_adds_one_over_k_per_hit_and_scores_the_first_token():
    """A planted decoding: needle span [5, 9) (|k| = 4), two layers x two heads.

    step 0 (prompt pass) emits ids[6]: heads (0,0) and (1,1) look at 6 -> copy
    step 1 emits ids[6] again:         (0,0) looks at 6 again -> copy; (1,1) looks at 7 (not y)
    step 2 emits ids[7]:               (0,0) looks at 7 -> copy; (1,1) looks at 2 (outside)
    Reference (retrieval_calculate): (0,0) 3 hits, (1,1) 1 hit. Distinct positions: (0,0) {6, 7}.
    Skipping the first answer token would give (0,0) 2 and (1,1) 0.
    """
    ids = torch.tensor([[10, 11, 12, 13, 14, 20, 21, 22, 23, 15]])
    span = (5, 9)
    t = lambda rows: torch.tensor(rows)  # noqa: E731
    events = [(21, t([[6, 0], [3, 6]])), (21, t([[6, 1], [0, 7]])), (22, t([[7, 9], [4, 2]]))]
    reference = accumulate_copies(events, ids, span, "reference")
    distinct = accumulate_copies(events, ids, span, "distinct")
    np.testing.assert_array_equal(reference, [[3, 0], [0, 1]])
    np.testing.assert_array_equal(distinct, [[2, 0], [0, 1]])
    with pytest.raises(HeadscopeError, match="scoring"):
        accumulate_copies(events, ids, span, "set")


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
@pytest.mark.parametrize(("scoring", "stop", "steps", "prefill_chunk"),
                         [("distinct", "sentence", 4, 40), ("reference", "newline", 12, 0)])
def test_copy_events_counted_by_hand(smol, scoring, stop, steps, prefill_chunk):
    """Recount one trial's copy events from full attention rows (independent of the reducer, the
    KV cache and the chunked prefill), with the rule of each scoring: distinct positions, or one
    per copying step (the reference's retrieval_calculate), from the first answer token on."""
    from headscope.trace import trace

    task = make_task("needle", context_lengths="96", depths="0.5")
    (trial,) = task.trials(smol)
    text, copied = greedy_decode(smol, trial, max_new_tokens=steps, scoring=scoring, stop=stop,
                                 prefill_chunk=prefill_chunk)
    ids = trial.tokens
    a, b = trial.needle_span
    seen = [[set() for _ in range(smol.n_heads)] for _ in range(smol.n_layers)]
    hits = np.zeros((smol.n_layers, smol.n_heads))
    for _ in range(steps):
        tr = trace(smol, ids, acts=("pattern",), keep_logits=True)
        y = int(tr.logits[0, -1].argmax())
        for layer in range(smol.n_layers):
            top = tr.get("pattern", layer)[0, :, -1].argmax(-1)
            for h in range(smol.n_heads):
                p = int(top[h])
                if a <= p < b and int(ids[0, p]) == y:
                    seen[layer][h].add(p)
                    hits[layer, h] += 1
        ids = torch.cat([ids, torch.tensor([[y]])], dim=1)
        if stop == "newline" and "\n" in smol.tokenizer.decode([y]):
            break
    want = hits if scoring == "reference" else np.array([[len(s) for s in row] for row in seen], dtype=float)
    # a model that copies nothing would make this compare two zero arrays
    assert want.sum() > 0, f"no copy event in {steps} steps (response {text!r}): the check would compare zeros"
    np.testing.assert_array_equal(copied, want)
    assert text == smol.tokenizer.decode(ids[0, trial.tokens.shape[1]:].tolist(), skip_special_tokens=True)


@pytest.mark.smollm2
def test_no_recalled_needle_is_an_error_not_zero_scores(smol):
    task = make_task("needle", context_lengths="96", depths="0.5")
    with pytest.raises(HeadscopeError, match="no trial passed the ROUGE-1 filter"):
        run_analyzer("retrieval_heads", smol, task, max_new_tokens=1)


@pytest.mark.smollm2
def test_first_answer_token_is_scored_as_in_the_reference(smol):
    """The reference scores the first answer token from the last prompt token's attention
    (retrieval_head_detection.py:289-290: prefill without the last token, which the decoding
    loop feeds first). Planted prompt: a needle, then the needle again cut before its answer, so
    the first generated token copies from the needle; recount it from the full attention rows."""
    from types import SimpleNamespace

    from headscope.trace import trace

    needle = load_needles()[0]
    cut = needle["needle"].lower().index(needle["answer"].lower())
    first = smol.tokenizer.encode(" " + needle["needle"], add_special_tokens=False)
    again = smol.tokenizer.encode(" " + needle["needle"][:cut].rstrip(), add_special_tokens=False)
    ids = torch.tensor([first + again])
    trial = SimpleNamespace(tokens=ids, needle_span=(0, len(first)))
    _, copied = greedy_decode(smol, trial, max_new_tokens=1, scoring="reference")
    tr = trace(smol, ids, acts=("pattern",), keep_logits=True)
    y = int(tr.logits[0, -1].argmax())
    want = np.zeros((smol.n_layers, smol.n_heads))
    for layer in range(smol.n_layers):
        top = tr.get("pattern", layer)[0, :, -1].argmax(-1)
        for h in range(smol.n_heads):
            p = int(top[h])
            if p < len(first) and int(ids[0, p]) == y:
                want[layer, h] += 1
    assert want.sum() > 0, "no head copied the first answer token: the planted prompt does not test the first step"
    np.testing.assert_array_equal(copied, want)


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
