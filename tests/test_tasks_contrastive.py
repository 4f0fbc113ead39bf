"""Contrastive tasks: IOI, facts, induction_contrast and user files (structure and validation)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pandas as pd
import pytest
import torch

from headscope import load_model
from headscope.errors import HeadscopeError
from headscope.interventions import run_with_interventions
from headscope.tasks import make_task
from headscope.tasks.ioi import IOITask
from headscope.tasks.user_file import UserFileTask


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


@pytest.mark.smollm2
@pytest.mark.parametrize("corruption", ["abc", "flipped"])
def test_ioi_structure(smol, corruption):
    batch = IOITask(n_prompts=12, corruption=corruption, seed=3).batch(smol)
    rows = torch.arange(batch.n)
    assert batch.clean.shape == batch.corrupted.shape
    assert torch.equal(batch.clean[rows, batch.positions["IO"]], batch.answer)
    assert torch.equal(batch.clean[rows, batch.positions["S1"]], batch.wrong)
    assert torch.equal(batch.clean[rows, batch.positions["S2"]], batch.wrong)
    assert (batch.positions["IO"] != batch.positions["S1"]).all()
    assert (batch.positions["S2"] > batch.positions["S1"]).all()
    ends = [smol.tokenizer.decode([int(batch.clean[r, batch.end[r]])]) for r in range(batch.n)]
    assert set(ends) == {" to"}
    assert {g.split("-")[1] for g in batch.groups} == {"ABBA", "BABA"}
    s2 = batch.corrupted[rows, batch.positions["S2"]]
    if corruption == "flipped":
        assert torch.equal(s2, batch.answer)
        assert torch.equal(batch.corrupted[rows, batch.positions["IO"]], batch.answer)
    else:  # three new names, none of them IO or S
        for key in ("IO", "S1", "S2"):
            names = batch.corrupted[rows, batch.positions[key]]
            assert not (names == batch.answer).any() and not (names == batch.wrong).any()
        assert (batch.corrupted[rows, batch.positions["S1"]] != s2).all()


@pytest.mark.smollm2
def test_ioi_clean_logit_diff_is_positive_on_most_prompts(smol):
    batch = IOITask(n_prompts=16, corruption="flipped").batch(smol)
    clean = batch.logit_diff(run_with_interventions(smol, batch.clean, [], positions=batch.end))
    flipped = batch.logit_diff(run_with_interventions(smol, batch.corrupted, [], positions=batch.end))
    assert clean.mean() > 1.0
    assert (clean > 0).float().mean() >= 0.75
    assert flipped.mean() < 0  # the flipped prompts prefer the other name


@pytest.mark.smollm2
def test_other_tasks_have_the_same_form(smol):
    for name, params in (("facts", {"n_prompts": 6}), ("induction_contrast", {"n_prompts": 4, "seq_len": 8})):
        batch = make_task(name, **params).batch(smol)
        assert batch.clean.shape == batch.corrupted.shape
        assert "END" in batch.positions and batch.answer.shape == (batch.n,)
        assert (batch.answer != batch.wrong).all()
    ind = make_task("induction_contrast", n_prompts=4, seq_len=8).batch(smol)
    rows = torch.arange(ind.n)
    # the token after the earlier occurrence of the last token is the answer
    assert torch.equal(ind.clean[rows, ind.positions["PREV"] + 1], ind.answer)
    assert torch.equal(ind.clean[rows, ind.positions["PREV"]], ind.clean[rows, ind.end])


def _rows():
    return [
        {"clean": "The capital city of France is", "corrupted": "The capital city of Spain is",
         "answer": " Paris", "wrong": " Madrid"},
        {"clean": "The capital city of Italy is", "corrupted": "The capital city of Japan is",
         "answer": " Rome", "wrong": " Tokyo"},
    ]


@pytest.mark.smollm2
@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_user_file_loads(smol, tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    df = pd.DataFrame(_rows())
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(_rows()))
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    batch = UserFileTask(path=str(path)).batch(smol)
    assert batch.n == 2 and int(batch.answer[0]) == smol.single_token(" Paris")


@pytest.mark.smollm2
def test_user_file_errors(smol, tmp_path):
    bad = tmp_path / "missing.csv"
    pd.DataFrame([{"clean": "a", "corrupted": "b", "answer": " x"}]).to_csv(bad, index=False)
    with pytest.raises(HeadscopeError, match="missing column.*wrong"):
        UserFileTask(path=str(bad)).batch(smol)
    multi = tmp_path / "multi.csv"
    rows = _rows()
    rows[1]["answer"] = " Rome and Milan"
    pd.DataFrame(rows).to_csv(multi, index=False)
    with pytest.raises(HeadscopeError, match="row 1.*tokens"):
        UserFileTask(path=str(multi)).batch(smol)
    uneven = tmp_path / "uneven.csv"
    rows = _rows()
    rows[0]["corrupted"] = "The capital city of the United Kingdom is"
    pd.DataFrame(rows).to_csv(uneven, index=False)
    with pytest.raises(HeadscopeError, match="row 0.*same length"):
        UserFileTask(path=str(uneven)).batch(smol)
    with pytest.raises(HeadscopeError, match="does not exist"):
        UserFileTask(path=str(tmp_path / "nope.csv")).batch(smol)
