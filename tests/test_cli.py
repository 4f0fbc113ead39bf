"""The CLI end to end in a subprocess, and its error paths (one line, non-zero, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import headscope as hs

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_PROGRESS": "0", "COLUMNS": "120"}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headscope", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_score_toy_writes_parquet_and_html(tmp_path) -> None:
    out, plot = tmp_path / "r.parquet", tmp_path / "r.html"
    res = run("score", "--model", "toy-induction", "--out", str(out), "--plot", str(plot),
              "--seed", "3", "-o", "n_prompts=4", "-o", "seq_len=16")
    assert res.returncode == 0, res.stderr
    scores = hs.read_parquet(out)
    assert scores.heads("induction", k=1) == [(1, 0)]
    assert scores.provenance["task"]["seed"] == 3 and scores.provenance["task"]["n_prompts"] == 4
    html = plot.read_text()
    assert "plotly" in html and "Plotly.newPlot" in html and "induction" in html
    assert "<script src=\"http" not in html  # self-contained
    shown = run("show", str(out), "--top", "2")
    assert shown.returncode == 0 and "1.0" in shown.stdout and "provenance" in shown.stdout


@pytest.mark.smollm2
def test_default_score_runs_offline_on_smollm2(tmp_path) -> None:
    out = tmp_path / "s.parquet"
    res = run("score", "--out", str(out), "-o", "n_prompts=2", "-o", "seq_len=16")
    assert res.returncode == 0, res.stderr
    scores = hs.read_parquet(out)
    assert scores.provenance["model"]["spec"] == "smollm2-135m"
    assert scores.provenance["model"]["source"] == "gguf"
    assert len(scores) == 30 * 9 * 3


def test_models_and_tasks_listings() -> None:
    res = run("models")
    assert res.returncode == 0 and "smollm2-135m" in res.stdout and "toy-induction" in res.stdout
    res = run("tasks")
    assert res.returncode == 0 and "induction" in res.stdout and "pattern_scores" in res.stdout


ERRORS = [
        (["score", "--model", "toy-inductoin"], "Did you mean 'toy-induction'"),
        (["score", "--model", "no-such-org/no-such-model"], "not available offline"),
        (["score", "--model", "toy-induction", "--task", "inductoin"], "Did you mean 'induction'"),
        (["score", "--model", "toy-induction", "--analyzer", "patern_scores"], "Did you mean 'pattern_scores'"),
        (["score", "--model", "toy-induction", "-o", "seq_lne=4"], "Did you mean 'seq_len'"),
        (["score", "--model", "toy-induction", "-o", "seq_len"], "not KEY=VALUE"),
        (["score", "--model", "toy-induction", "--out", "r.csv"], "should end in .parquet"),
        (["score", "--model", "toy-induction", "--plot", "r.png"], "should end in .html"),
        (["score", "--model", "toy-induction", "--out", "/proc/nope/r.parquet"], "cannot"),
        (["score", "--model", "toy-induction", "-o", "seq_len=5000"], "round-trip word tokens"),
        (["score", "--model", "toy-induction", "--device", "cuda:3"], "no CUDA GPU"),
        (["show", "/nonexistent/r.parquet"], "no such results file"),
        (["score", "--model", "toy-induction", "--bogus-flag"], "No such option"),
        (["scor", "--model", "toy-induction"], "Did you mean 'score'"),
]


@pytest.mark.parametrize("args, message", [ERRORS[0], ERRORS[1], ERRORS[9]])
def test_user_errors_in_a_real_process(args, message, tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "headscope", *args], capture_output=True, text=True,
                         env=ENV, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0]


@pytest.mark.parametrize("args, message", ERRORS)
def test_user_errors_are_one_line(args, message, tmp_path, monkeypatch, capsys) -> None:
    from headscope.cli.app import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2  # a user error, not the internal-error exit (1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0] and "internal error" not in lines[0]
