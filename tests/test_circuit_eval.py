"""Circuit evaluation on a planted mechanism, circuit overlap by hand, and the CLI
(``headscope circuit evaluate``, ``headscope compare`` on edge tables) with its one-line errors.
The raw-HF checks of the numbers are in ``tests/conformance/test_circuit_eval.py``."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from cli_harness import run_main

import headscope as hs  # noqa: E402
from headscope.circuits.graph import EdgeGraph  # noqa: E402
from headscope.results.edge_scores import EdgeScores  # noqa: E402

PLANTED = {  # toy-induction's induction mechanism (headscope/toy/induction.py; tests/test_circuits.py)
    ("input", "a0.h0", "v"),
    ("a0.h0", "a1.h0", "k"),
    ("input", "a1.h0", "v"),
    ("a1.h0", "logits", "in"),
}
NO_PREV = {e for e in PLANTED if "a0.h0" not in e[:2]}  # the previous-token head left out
TASK = {"n_prompts": 4, "seq_len": 6, "seed": 0}


def edge_table(graph: EdgeGraph, circuit: set, task: str = "induction_contrast", scores: dict | None = None) -> EdgeScores:
    keys = [(e.sender.name, e.receiver.name, e.receiver.input) for e in graph.edges]
    score = [(scores or {}).get(k, 1.0 if k in circuit else 0.0) for k in keys]
    return EdgeScores.from_edges(graph.edges, score, [k in circuit for k in keys], model="toy-induction", task=task,
                                 method="hand", provenance={"task": {"name": task, **TASK}})


@pytest.fixture(autouse=True)
def one_thread():
    """toy-induction's matrices are small: one thread is faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy():  # noqa: ANN201
    from headscope.tasks.induction_contrast import InductionContrastTask

    model = hs.load_model("toy-induction")
    return model, InductionContrastTask(**TASK), EdgeGraph.of(model)


def test_planted_circuit_is_complete_and_one_without_the_previous_token_head_is_not(toy):
    """Planted: the four edges of the induction mechanism restore the clean behaviour and their
    nodes {a0.h0, a1.h0} are complete: knocking any K out of C or out of the model gives the same
    metric (incompleteness below 2% of the clean - corrupted gap for every K tried); both nodes are
    needed (minimality with K = {} is most of the gap). Without the previous-token head the node set
    {a1.h0} is incomplete by most of the gap (F(C) is the corrupted level, F(M) the clean one), and
    the edge circuit restores nothing."""
    from headscope.circuits.evaluate import evaluate_circuit

    model, task, graph = toy
    good = evaluate_circuit(model, task, edge_table(graph, PLANTED), sizes=[4], n_random=2, samples=4, greedy=2)
    gap = good.value("metric", "clean") - good.value("metric", "corrupted")
    assert gap > 5
    assert good.value("faithfulness", "circuit") == pytest.approx(1.0, abs=0.02)
    t = good.table
    assert t.loc[t["quantity"] == "nodes", "K"].item() == "a0.h0,a1.h0"
    inc = t[t["quantity"] == "incompleteness"]
    assert len(inc) == 1 + 4 + 2 and (inc["value"] < 0.02 * gap).all(), inc
    mini = t[(t["quantity"] == "minimality") & (t["subset"] == "empty")]
    assert list(mini["node"]) == ["a0.h0", "a1.h0"] and (mini["value"] > 0.9 * gap).all(), mini
    curve = t[t["quantity"] == "curve"].set_index("subset")["value"]
    assert curve["top"] == pytest.approx(1.0, abs=0.02) and abs(curve["random_mean"]) < 0.05

    bad = evaluate_circuit(model, task, edge_table(graph, NO_PREV), curve=False, samples=2, greedy=1)
    assert bad.table.loc[bad.table["quantity"] == "nodes", "K"].item() == "a1.h0"
    assert bad.value("incompleteness", "empty") > 0.9 * gap
    assert abs(bad.value("faithfulness", "circuit")) < 0.05


def test_overlap_of_hand_made_circuits():
    """Two tables sharing edges e0..e3, plus e5 (A) and e4 (B); counted by hand: circuit A =
    {e0, e1, e2}, B = {e1, e2, e4}: both 2, union 4, Jaccard 0.5; nodes (senders other than input)
    A = {a0.h0, a0.h1}, B = {a0.h0, a0.h1, m0}: both 2, union 3, Jaccard 2/3. Scores on the 4
    shared edges A = (1, 2, 3, 4), B = (10, 30, 20, 40): ranks differ by (0, 1, 1, 0), Spearman
    1 - 6 * 2 / (4 * 15) = 0.8."""
    import pandas as pd

    from headscope.circuits.overlap import circuit_overlap

    def table(rows):  # noqa: ANN001, ANN202
        return pd.DataFrame(rows, columns=["sender", "receiver", "receiver_input", "score", "circuit"])

    e = [("input", "a0.h0", "q"), ("a0.h0", "a1.h0", "k"), ("a0.h1", "logits", "in"), ("input", "m0", "in"),
         ("m0", "logits", "in"), ("a0.h0", "a1.h1", "v")]
    a = table([(*e[0], 1.0, True), (*e[1], 2.0, True), (*e[2], 3.0, True), (*e[3], 4.0, False), (*e[5], 9.0, False)])
    b = table([(*e[0], 10.0, False), (*e[1], 30.0, True), (*e[2], 20.0, True), (*e[3], 40.0, False), (*e[4], 5.0, True)])
    got = circuit_overlap(a, b)
    assert got["edges"] == {"a": 3, "b": 3, "both": 2, "union": 4, "jaccard": 0.5}
    assert got["nodes"] == {"a": 2, "b": 3, "both": 2, "union": 3, "jaccard": pytest.approx(2 / 3)}
    assert got["nodes_both"] == ["a0.h0", "a0.h1"] and got["shared_edges"] == 4
    assert got["spearman"] == pytest.approx(0.8)
    assert got["edges_only_a"] == ["input->a0.h0<q>"] and got["edges_only_b"] == ["m0->logits<in>"]


def test_cli_evaluate_reports_and_records_the_source_task(toy, tmp_path, capsys):
    """``headscope circuit evaluate`` on the planted circuit: the table's model and task (with the
    task parameters of its provenance) by default; JSON summary with faithfulness ~1 and
    incompleteness ~0; evaluated on another task than its table's, the provenance says cross-task
    and names the circuit's task; ``--reference`` adds the other circuit's faithfulness (the circuit
    without the previous-token head: ~0, planted) and the overlap counted by hand (edges 2 of 4,
    nodes 1 of 2)."""
    model, task, graph = toy
    src = edge_table(graph, PLANTED).to_parquet(tmp_path / "planted.parquet")
    code, out, err = run_main(["circuit", "evaluate", str(src), "-o", "sizes=4", "-o", "samples=1", "-o", "greedy=0",
                               "--out", str(tmp_path / "ev.json")], capsys)
    assert code == 0, err
    assert "faithfulness 1.00" in out and "completeness" in out and "minimality" in out
    doc = json.loads((tmp_path / "ev.json").read_text())
    prov, rows = doc["provenance"], doc["rows"]
    assert prov["task"]["n_prompts"] == 4 and prov["task"]["seq_len"] == 6  # reused from the table's provenance
    assert prov["choices"]["cross_task"] is False and prov["choices"]["circuit"]["task"] == "induction_contrast"
    faith = next(r["value"] for r in rows if r["quantity"] == "faithfulness")
    assert faith == pytest.approx(1.0, abs=0.02)
    other = edge_table(graph, PLANTED, task="ioi").to_parquet(tmp_path / "from_ioi.parquet")
    ref = edge_table(graph, NO_PREV).to_parquet(tmp_path / "own.parquet")
    code, out, err = run_main(["circuit", "evaluate", str(other), "--task", "induction_contrast", "-o", "n_prompts=4",
                               "--reference", str(ref),
                               "-o", "seq_len=6", "-o", "curve=false", "-o", "samples=0", "-o", "greedy=0",
                               "--out", str(tmp_path / "cross.parquet")], capsys)
    assert code == 0, err
    assert "cross-task" in out
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(tmp_path / "cross.parquet").metadata[b"headscope"])
    assert meta["choices"]["cross_task"] is True and meta["choices"]["circuit"]["task"] == "ioi"
    assert meta["analyzer"] == "circuit_evaluate"
    rows = pq.read_table(tmp_path / "cross.parquet").to_pandas().set_index(["quantity", "subset"])
    assert abs(rows.loc[("faithfulness", "reference"), "value"]) < 0.05
    assert rows.loc[("faithfulness", "circuit"), "value"] == pytest.approx(1.0, abs=0.02)
    assert tuple(rows.loc[("overlap", "edges"), ["value", "f_a", "f_b"]]) == (0.5, 2.0, 4.0)
    assert tuple(rows.loc[("overlap", "nodes"), ["value", "f_a", "f_b"]]) == (0.5, 1.0, 2.0)
    assert "reference circuit: faithfulness" in out


def test_cli_compare_edge_tables(toy, tmp_path, capsys):
    """``headscope compare`` on two EdgeScores files prints the overlap counted by hand: planted (4
    edges, nodes a0.h0, a1.h0) vs no-previous-token (2 edges, node a1.h0): edges 4/2/2, Jaccard 0.5;
    nodes 2/1/1, Jaccard 0.5."""
    _, _, graph = toy
    a = edge_table(graph, PLANTED).to_parquet(tmp_path / "a.parquet")
    b = edge_table(graph, NO_PREV).to_parquet(tmp_path / "b.parquet")
    code, out, err = run_main(["compare", str(a), str(b), "--csv", str(tmp_path / "e.csv")], capsys)
    assert code == 0, err
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in out.splitlines()
             if line.startswith("│")}
    assert lines["edges"] == ["4", "2", "2", "4", "0.500"] and lines["nodes"] == ["2", "1", "1", "2", "0.500"]
    assert "circuit edges only in A: a0.h0->a1.h0<k>, input->a0.h0<v>" in out
    assert len((tmp_path / "e.csv").read_text().splitlines()) == len(graph.edges) + 1


def _head_scores(tmp_path):  # noqa: ANN001, ANN202
    from headscope.results import HeadScores

    return HeadScores.from_matrix([[1.0]], model="m", task="t", analyzer="a", metric="x").to_parquet(tmp_path / "h.parquet")


BAD = [
    (lambda p: ["circuit", "evaluate", str(p / "missing.parquet")], "no such edge-scores file"),
    (lambda p: ["circuit", "evaluate", str(_head_scores(p))], "not an edge-scores result"),
    (lambda p: ["circuit", "evaluate", str(p / "planted.parquet"), "--task", "induction"], "needs a contrastive task (clean/corrupted prompts); task 'induction' is not one"),
    (lambda p: ["circuit", "evaluate", str(p / "planted.parquet"), "-o", "ablation=zero"], "ablation must be corrupted or mean"),
    (lambda p: ["circuit", "evaluate", str(p / "planted.parquet"), "-o", "sizez=3"], "unknown option 'sizez'"),
    (lambda p: ["circuit", "evaluate", str(p / "planted.parquet"), "-o", "sizes=1,x"], "sizes must be whole numbers"),
    (lambda p: ["circuit", "evaluate", str(p / "empty.parquet")], "circuit is empty"),
    (lambda p: ["circuit", "evaluate", str(p / "planted.parquet"), "--model", "zoo-llama"], "not in the graph"),
    (lambda p: ["compare", str(p / "planted.parquet"), str(_head_scores(p))], "holds edge scores but"),
    (lambda p: ["compare", str(p / "planted.parquet"), str(p / "missing.parquet")], "no such results file"),
    (lambda p: ["circuit", "--model", "zoo-llama", "evaluate", str(p / "planted.parquet")], "--model before 'evaluate'"),
    (lambda p: ["circuit", "evaluate", str(p / "positions.parquet")], "has a 'position' column"),
    (lambda p: ["compare", str(p / "planted.parquet"), str(p / "positions.parquet")], "has a 'position' column"),
]


@pytest.mark.parametrize(("make", "message"), BAD)
def test_cli_bad_inputs_are_one_line(make, message, toy, tmp_path, capsys):
    _, _, graph = toy
    edge_table(graph, PLANTED).to_parquet(tmp_path / "planted.parquet")
    edge_table(graph, set()).to_parquet(tmp_path / "empty.parquet")
    per_position = edge_table(graph, PLANTED)
    per_position["position"] = 0
    per_position.to_parquet(tmp_path / "positions.parquet")
    code, out, err = run_main(make(tmp_path), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_mean_ablation_needs_aligned_prompts():
    """ablation=mean is refused with one line when the prompts' END positions differ or there is one
    prompt (the per-position mean would mix different positions / is no mean)."""
    from headscope.circuits.evaluate import check_mean_feasible
    from headscope.errors import HeadscopeError
    from headscope.tasks.contrastive import ContrastiveBatch

    toks = torch.zeros(2, 5, dtype=torch.long)
    ok = ContrastiveBatch(toks, toks, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long), {"END": torch.tensor([4, 4])})
    check_mean_feasible(ok)
    ragged = ContrastiveBatch(toks, toks, ok.answer, ok.wrong, {"END": torch.tensor([4, 3])})
    with pytest.raises(HeadscopeError, match="END positions differ"):
        check_mean_feasible(ragged)
    one = ContrastiveBatch(toks[:1], toks[:1], ok.answer[:1], ok.wrong[:1], {"END": torch.tensor([4])})
    with pytest.raises(HeadscopeError, match="at least 2 prompts"):
        check_mean_feasible(one)


def test_head_positions_syntax():
    """``-o head_positions``: HEAD@POSITION entries, +k/-k offsets, a head listed once per token
    (repeats dropped), spaces ignored; empty = not used (any nodes); one-line errors otherwise."""
    from headscope.circuits.nodes import parse_head_positions
    from headscope.errors import HeadscopeError

    got = parse_head_positions("9.6@END, 9.6@S2-1,2.2@S1+1,9.6@END,10.0@IO")
    assert got == {"a9.h6": [("END", 0), ("S2", -1)], "a2.h2": [("S1", 1)], "a10.h0": [("IO", 0)]}
    assert parse_head_positions("", "components") == {}
    for text, nodes, message in [("9.6", "heads", "cannot parse '9.6'"), ("9.6@", "heads", "cannot parse '9.6@'"),
                                 ("9.6@END+x", "heads", "cannot parse"), ("a9.h6@END", "heads", "cannot parse"),
                                 ("9.6@END", "components", "needs -o nodes=heads"), ("9.6@END", "head", "nodes must be")]:
        with pytest.raises(HeadscopeError, match=message) as err:
            parse_head_positions(text, nodes)
        assert "\n" not in str(err.value)
