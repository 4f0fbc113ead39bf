"""``headscope compare`` and querying many runs: aligned per-head diffs, rank agreement and the
figure, checked against independent pandas/numpy computations on real toy-model runs."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from headscope.errors import HeadscopeError  # noqa: E402
from headscope.report import compare_results, read_runs  # noqa: E402
from headscope.results import read_parquet  # noqa: E402


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks with ties (hand-written, for an independent Spearman)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import headscope as hs

    tmp = tmp_path_factory.mktemp("runs")
    toy = hs.load_model("toy-induction")
    hs.score(toy, task="induction", task_params={"n_prompts": 4, "seq_len": 12, "seed": 0}).to_parquet(tmp / "a.parquet")
    hs.score(toy, task="induction", task_params={"n_prompts": 4, "seq_len": 20, "seed": 1}).to_parquet(tmp / "b.parquet")
    gqa = hs.load_model("toy-gqa")
    hs.score(gqa, task="induction", analyzer="echo_induction",
             task_params={"n_prompts": 3, "seq_len": 12}).to_parquet(tmp / "sub" / "c.parquet")
    return tmp


def test_compare_matches_independent_computation(runs):
    a, b = read_parquet(runs / "a.parquet"), read_parquet(runs / "b.parquet")
    cmp = compare_results(a, b, k=2)
    assert list(cmp.summary["metric"]) == a.metrics
    for metric in a.metrics:
        xa = a.matrix(metric).to_numpy().ravel()
        xb = b.matrix(metric).to_numpy().ravel()
        rows = cmp.table[cmp.table["metric"] == metric].sort_values(["layer", "head"])
        np.testing.assert_allclose(rows["diff"].to_numpy(), xb - xa)
        ra, rb = _avg_ranks(xa), _avg_ranks(xb)
        expected = np.corrcoef(ra, rb)[0, 1] if ra.std() and rb.std() else np.nan
        got = cmp.summary.set_index("metric").loc[metric, "spearman"]
        assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected)
    # the planted induction head tops both runs
    ind = cmp.table[cmp.table["metric"] == "induction"]
    assert ind.loc[ind["rank_a"] == 1, "label"].tolist() == ind.loc[ind["rank_b"] == 1, "label"].tolist()


def test_compare_two_models_with_explicit_metrics(runs):
    a, c = read_parquet(runs / "a.parquet"), read_parquet(runs / "sub" / "c.parquet")
    cmp = compare_results(a, c, metric_a="induction", metric_b="induction")
    assert cmp.summary["heads_a"].iloc[0] == 4 and cmp.summary["heads_b"].iloc[0] == len(c[c["metric"] == "induction"])
    assert cmp.summary["heads_both"].iloc[0] == len(cmp.table.dropna(subset=["score_a", "score_b"]))
    with pytest.raises(HeadscopeError, match="no metric 'nope'"):
        compare_results(a, c, metric_a="nope", metric_b="induction")
    with pytest.raises(HeadscopeError, match="both"):
        compare_results(a, c, metric_a="induction")


def test_cli_compare_writes_table_figure_and_csv(runs, tmp_path, capsys):
    from headscope.cli.app import main

    out, csv = tmp_path / "diff.html", tmp_path / "diff.csv"
    main(["compare", str(runs / "a.parquet"), str(runs / "b.parquet"), "--out", str(out), "--csv", str(csv), "--top", "3"])
    text = capsys.readouterr().out
    assert "agreement per metric" in text and "induction" in text
    page = out.read_text()
    assert page.count('class="plotly-graph-div"') == 3 and "largest differences" in page
    table = pd.read_csv(csv)
    assert {"metric", "layer", "head", "score_a", "score_b", "diff"} <= set(table.columns)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(runs / "a.parquet"), str(tmp_path / "missing.parquet")])
    assert info.value.code == 2


def test_read_runs_many_files(runs):
    df = read_runs(runs)  # a directory: every parquet below it
    assert set(df["file"].map(lambda f: f.rsplit("/", 1)[-1])) == {"a.parquet", "b.parquet", "c.parquet"}
    assert {"model_id", "seed", "time_utc"} <= set(df.columns)
    assert df["model_id"].str.startswith("toy-").all()
    per_model = df[df["metric"] == "induction"].groupby("model")["score"].max()
    assert set(per_model.index) == {"toy-induction", "toy-gqa"}
    assert len(read_runs(str(runs / "*.parquet"))) == len(df[~df["file"].str.contains("/sub/")])
    with pytest.raises(HeadscopeError):
        read_runs(str(runs / "nothing*.parquet"))


def test_cli_report_from_several_results(runs, tmp_path, capsys):
    from headscope.cli.app import main

    out = tmp_path / "r.html"
    main(["report", str(runs / "a.parquet"), str(runs / "sub" / "c.parquet"), "--out", str(out), "--title", "two"])
    page = out.read_text()
    assert "<title>two</title>" in page and page.count("<h2 id='r") == 2
    assert page.count("plotly.js") >= 1 and "provenance" in page
