"""Ranking of top heads (issue 23 #4): ``--order abs|desc|asc``; signed metrics rank by |score|."""

from __future__ import annotations

import numpy as np
import pytest
from cli_harness import run_main

from headscope.errors import HeadscopeError
from headscope.results import HeadScores


def _signed() -> HeadScores:
    values = np.array([[0.0, 0.0], [-0.9999, 0.001]])
    return HeadScores.from_matrix(values, model="m", task="t", analyzer="path_patching", metric="path_patch")


def test_top_ranks_signed_metric_by_abs_by_default() -> None:
    s = _signed()
    assert list(s.top(1)["label"]) == ["1.0"]
    assert s.order_for() == "abs"
    assert list(s.top(4, order="desc")["label"]) == ["1.1", "0.0", "0.1", "1.0"]
    assert list(s.top(1, order="asc")["label"]) == ["1.0"]
    assert s.heads(k=1) == [(1, 0)] and s.heads(threshold=0.5) == [(1, 0)]
    assert s.heads(k=1, order="desc") == [(1, 1)]
    with pytest.raises(HeadscopeError, match="Did you mean 'abs'"):
        s.top(1, order="ab")


def test_top_keeps_descending_for_unsigned_metric() -> None:
    s = HeadScores.from_matrix(np.array([[0.1, 0.9], [0.5, 0.2]]), model="m", task="t", analyzer="a", metric="x")
    assert s.order_for() == "desc"
    assert list(s.top(4)["label"]) == ["0.1", "1.0", "1.1", "0.0"]


def _ranked(out: str) -> list[str]:
    """The head column of a top-heads table, in order."""
    return [line.split("│")[3].strip() for line in out.splitlines() if line.count("│") >= 5][:4]


def test_cli_path_patching_ranks_planted_head_first(tmp_path, capsys) -> None:
    out = tmp_path / "pp.parquet"
    code, text, err = run_main(["score", "-m", "toy-induction", "-t", "induction_contrast", "-a", "path_patching",
                                "--out", str(out), "--top", "4"], capsys)
    assert code == 0, err
    assert _ranked(text)[0] == "1.0" and "by |score|" in text
    code, text, err = run_main(["show", str(out), "--top", "4"], capsys)
    assert code == 0, err
    assert _ranked(text)[0] == "1.0" and "-0.9999" in text and "by |score|" in text
    code, text, err = run_main(["show", str(out), "--top", "4", "--order", "desc"], capsys)
    assert code == 0, err
    assert _ranked(text)[-1] == "1.0" and "highest first" in text
    page = tmp_path / "r.html"
    code, _, err = run_main(["report", str(out), "--out", str(page), "--top", "1"], capsys)
    assert code == 0, err
    html = page.read_text()
    assert "(by |score|)" in html and "<td>1.0</td>" in html
    code, _, err = run_main(["report", str(out), "--out", str(page), "--top", "1", "--order", "desc"], capsys)
    assert code == 0 and "(highest first)" in page.read_text() and "<td>1.1</td>" in page.read_text()
    code, _, err = run_main(["show", str(out), "--order", "size"], capsys)
    assert code == 2 and "unknown --order 'size'" in err and len(err.strip().splitlines()) == 1
