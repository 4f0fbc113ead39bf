"""``headscope circuit`` end to end (EdgeScores Parquet with provenance) and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import headscope as hs
from headscope.results.edge_scores import read_edge_scores

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_PROGRESS": "0", "COLUMNS": "120"}
TOY = ["--model", "toy-induction", "--task", "induction_contrast", "-o", "n_prompts=3", "-o", "seq_len=6"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headscope", *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_circuit_writes_edge_scores_with_provenance(tmp_path) -> None:
    out, plot = tmp_path / "edges.parquet", tmp_path / "edges.html"
    res = run("circuit", *TOY, "--method", "eap_ig", "-o", "steps=3", "-o", "top_edges=4", "--seed", "2", "--out", str(out),
              "--plot", str(plot))
    assert res.returncode == 0, res.stderr
    edges = read_edge_scores(out)
    # toy-induction, 2 layers x 2 heads (MHA), counted by hand: layer-0 q/k/v (6 inputs) read only
    # the input: 6; m0: input + 2 heads = 3; layer-1 q/k/v: 6 x (input, a0.h0, a0.h1, m0) = 24;
    # m1: those 4 + 2 layer-1 heads = 6; logits: all 7 senders. Total 46.
    assert len(edges) == 46
    assert int(edges["circuit"].sum()) == 4
    top = edges.top(4)
    assert set(top.index) == set(edges.index[edges["circuit"]])
    prov = edges.provenance
    assert prov["analyzer"] == "circuit:eap_ig" and prov["options"]["steps"] == 3 and prov["task"]["seed"] == 2
    assert "libraries" in prov and "KV head" in prov["choices"]["gqa"]
    assert "a0.h0 -> a1.h0<k>" in res.stdout
    html = plot.read_text()
    assert "Plotly.newPlot" in html and "a0.h0 -\\u003e a1.h0\\u003ck\\u003e" in html  # plotly escapes < and >


ERRORS = [
    (["circuit", *TOY, "--method", "eap_gi"], "Did you mean 'eap_ig'"),
    (["circuit", *TOY, "--method", "eap_ig", "-o", "steps=2.5"], "steps"),
    (["circuit", *TOY, "--method", "eap", "-o", "stepz=2"], "unknown option 'stepz'"),
    (["circuit", "--model", "toy-induction", "--task", "induction"], "contrastive task"),
    (["circuit", *TOY, "--out", "x.csv"], "should end in .parquet"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_circuit_errors_are_one_line(args, message) -> None:
    res = run(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_tasks_lists_circuit_methods() -> None:
    res = run("tasks")
    assert res.returncode == 0 and "circuit methods" in res.stdout and "eap_ig" in res.stdout


def test_reading_a_head_scores_file_as_edges_is_one_line(tmp_path) -> None:
    from headscope.errors import HeadscopeError
    from headscope.results import HeadScores

    path = HeadScores.from_matrix([[1.0]], model="m", task="t", analyzer="a", metric="x").to_parquet(tmp_path / "h.parquet")
    with pytest.raises(HeadscopeError, match="not an edge-scores result"):
        read_edge_scores(path)
    with pytest.raises(HeadscopeError, match="no such edge-scores file"):
        read_edge_scores(tmp_path / "missing.parquet")


def test_show_on_an_edge_scores_file_names_the_reader(tmp_path) -> None:
    from headscope.circuits.graph import EdgeGraph
    from headscope.results.edge_scores import EdgeScores

    graph = EdgeGraph.of(hs.load_model("toy-induction"))
    path = EdgeScores.from_edges(graph.edges, [0.0] * len(graph.edges), [False] * len(graph.edges), model="m",
                                 task="t", method="eap").to_parquet(tmp_path / "e.parquet")
    res = run("show", str(path))
    assert res.returncode == 2 and "read_edge_scores" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_composition_svd_rows_per_component_and_evaluate_refuses(tmp_path) -> None:
    """``--method composition_svd``: one row per (top edge, SVD component), labelled ``#c<i>``;
    toy-induction's previous-token head a0.h0 feeds induction head a1.h0's key (its top edge);
    ``circuit evaluate`` refuses the component table with one line. The numbers themselves are
    checked against hand SVDs in tests/conformance/test_composition_svd.py."""
    out = tmp_path / "svd.parquet"
    res = run("circuit", *TOY, "--method", "composition_svd", "-o", "top_edges=2", "-o", "rank=3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = read_edge_scores(out)
    assert len(rows) == 6 and rows["component"].tolist() == [0, 1, 2] * 2
    assert (rows.sender.iloc[0], rows.receiver.iloc[0], rows.receiver_input.iloc[0]) == ("a0.h0", "a1.h0", "k")
    assert rows.provenance["analyzer"] == "circuit:composition_svd" and rows.provenance["options"]["rank"] == 3
    assert "a0.h0 -> a1.h0<k> #c0" in res.stdout
    bad = run("circuit", "evaluate", str(out))
    assert bad.returncode == 2 and "'component' column" in bad.stderr.strip().splitlines()[-1], bad.stderr
