"""Circuits on planted mechanisms: the edges headscope finds are the edges that were built in."""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.circuits.attribution import edge_attribution
from headscope.circuits.exact import exact_edge_effects, prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine
from headscope.tasks.induction_contrast import InductionContrastTask


@pytest.fixture(scope="module")
def induction():  # noqa: ANN201
    model = hs.load_model("toy-induction")
    batch = InductionContrastTask(n_prompts=4, seq_len=6, seed=0).batch(model)
    engine = PatchEngine(model, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(model)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    return model, engine, graph, runs


def test_previous_token_head_feeds_the_induction_key(induction):
    """toy-induction (headscope/toy/induction.py): head 0.0 writes the previous token into
    ``prev``; head 1.0's key reads ``prev``, its query reads ``tok`` and its value reads ``tok``.
    So the planted edge is 0.0 -> 1.0's key, carrying most of the clean-vs-corrupted gap, and the
    edges 0.0 -> 1.0's query and value carry nothing (their inputs ignore the ``prev`` subspace)."""
    model, engine, graph, runs = induction
    edges = [graph.edge("a0.h0", "a1.h0", act) for act in ("k", "q", "v")]
    exact = exact_edge_effects(engine, runs, edges).mean(1)
    gap = float(runs.corrupted_metric.mean() - runs.clean_metric.mean())
    assert gap < -5, "the corruption should break induction"
    assert float(exact[0]) < 0.5 * gap, f"0.0 -> 1.0<k> should carry most of the gap {gap:.2f}; got {float(exact[0]):.3f}"
    assert exact[1:].abs().max() < 1e-4 * abs(gap), f"0.0 -> 1.0 q/v edges must be zero; got {exact[1:].tolist()}"
    index = {e.key: i for i, e in enumerate(graph.edges)}
    into_head = [i for i, e in enumerate(graph.edges) if e.receiver.name == "a1.h0" and e.sender.kind == "head"]
    ig = edge_attribution(engine, runs, graph, steps=5)
    k, q, v = (float(ig[index[e.key]]) for e in edges)
    assert k < 0.5 * float(exact[0]) and abs(q) < 1e-6 and abs(v) < 0.2 * abs(k), f"EAP-IG k={k:.3f} q={q:.3g} v={v:.3g}"
    top = max(into_head, key=lambda i: abs(float(ig[i])))
    assert graph.edges[top].key == "a0.h0->a1.h0<k>"


def test_eap_misses_the_saturated_key_edge(induction):
    """The induction head's matching key scores 24 over the others (toy/induction.py), so its
    softmax is saturated on the clean run: the gradient through the key is ~e^-24 and EAP, a
    first-order estimate at the clean point, gives the planted key edge almost nothing, while its
    exact effect is most of the gap. (This is why EAP-IG integrates along the path.)"""
    model, engine, graph, runs = induction
    edge = graph.edge("a0.h0", "a1.h0", "k")
    exact = float(exact_edge_effects(engine, runs, [edge]).mean())
    eap = float(edge_attribution(engine, runs, graph, steps=1)[graph.edges.index(edge)])
    assert abs(eap) < 1e-2 * abs(exact), f"EAP {eap:.4g} vs exact {exact:.4g}"


PLANTED_CIRCUIT = {
    ("input", "a0.h0", "v"),  # 0.0 moves each token's identity one position on (its value reads tok)
    ("a0.h0", "a1.h0", "k"),  # 1.0's key reads the previous-token subspace 0.0 writes
    ("input", "a1.h0", "v"),  # 1.0's value reads the token it copies
    ("a1.h0", "logits", "in"),  # 1.0 writes the copied token into the readout subspace
}


def test_verified_pruning_recovers_the_planted_circuit():
    """ACDC-style pruning of the top EAP-IG edges keeps exactly the four edges the induction
    mechanism of toy-induction is built from (module docstring of headscope/toy/induction.py),
    which restore the clean behaviour on their own (faithfulness ~1: the two unrelated heads
    have small random OVs), while random edge sets of the same size restore nothing."""
    from headscope.circuits.methods import run_circuit_method

    model = hs.load_model("toy-induction")
    task = InductionContrastTask(n_prompts=4, seq_len=6, seed=0)
    edges = run_circuit_method("verified", model, task, candidates=12, n_random=3)
    kept = {(r.sender, r.receiver, r.receiver_input) for r in edges[edges["circuit"]].itertuples()}
    assert kept == PLANTED_CIRCUIT
    choices = edges.provenance["choices"]
    assert abs(choices["circuit_faithfulness"] - 1.0) < 0.02
    at5 = next(p for p in choices["faithfulness_curve"] if p["edges"] == 5)
    assert at5["faithfulness"] > 0.95 and abs(at5["random_mean"]) < 0.05
    verified = edges[edges["exact"].notna()]
    assert len(verified) == 12 and choices["verification"]["rank_correlation"] is not None


def test_route_importance_is_the_papers_proximity():
    """Ferrando & Voita 2024, Eq. 2, by hand: y = (1.5, 1) from x1 = (1, 1), x2 = (0.5, 0):
    ||y||_1 = 2.5, ||y - x1||_1 = 0.5, ||y - x2||_1 = 2 -> proximities 2 and 0.5 -> 0.8, 0.2."""
    import torch

    from headscope.circuits.routes import proximity_importance

    parts = torch.tensor([[1.0, 1.0], [0.5, 0.0]])
    got = proximity_importance(parts, parts.sum(0))
    assert torch.allclose(got, torch.tensor([0.8, 0.2]))
    far = torch.tensor([[3.0, 0.0], [-2.0, 1.0]])  # y = (1, 1): both farther from y than 0 is -> 0
    assert proximity_importance(far, far.sum(0)).tolist() == [0.0, 0.0]


def test_routes_follow_the_induction_value_path():
    """From the prediction at END: the induction head 1.0 writes into the logits; its value reads
    the copied token from the embedding at the attended position; queries and keys carry no
    information, so routes give every q/k edge 0 (the previous-token head's key edge included)."""
    from headscope.circuits.methods import run_circuit_method

    model = hs.load_model("toy-induction")
    task = InductionContrastTask(n_prompts=4, seq_len=6, seed=0)
    edges = run_circuit_method("routes", model, task)
    kept = {(r.sender, r.receiver, r.receiver_input) for r in edges[edges["circuit"]].itertuples()}
    assert {("a1.h0", "logits", "in"), ("input", "a1.h0", "v")} <= kept
    assert (edges[edges["receiver_input"].isin(["q", "k"])]["score"] == 0).all()


def test_kl_metric_has_no_eap_gradient_at_the_clean_run(induction):
    """``-KL(clean || run)`` is maximal (0) at the clean run, so its gradient there vanishes and
    EAP scores every edge 0 under metric=kl, while the exact KL effect of the planted key edge is
    negative (patching it changes the prediction) and EAP-IG, integrating along the path, sees it."""
    from headscope.circuits.attribution import kl_metric

    model, engine, graph, runs = induction
    edge = graph.edge("a0.h0", "a1.h0", "k")
    eap = edge_attribution(engine, runs, graph, steps=1, metric="kl")
    assert float(eap.abs().max()) < 1e-5
    ig = float(edge_attribution(engine, runs, graph, steps=5, metric="kl")[graph.edges.index(edge)])
    saved = engine.metric
    engine.metric = kl_metric(runs.clean.end_logits)
    try:
        exact = float(exact_edge_effects(engine, runs, [edge]).mean())
    finally:
        engine.metric = saved
    assert exact < -1.0 and ig < 0.25 * exact, f"exact KL effect {exact:.3f}, EAP-IG {ig:.3f}"


def test_eap_ig_grids(induction):
    """The two grids share their interior points k/m, k = 1..m-1: clean_end adds the clean end
    (k = m), corrupted_end the corrupted end (k = 0). So m * (clean_end(m) - corrupted_end(m))
    = clean_end(1) - corrupted_end(1) (the gradients at the two ends), and clean_end(1) is EAP."""
    model, engine, graph, runs = induction
    one = {g: edge_attribution(engine, runs, graph, steps=1, grid=g) for g in ("clean_end", "corrupted_end")}
    three = {g: edge_attribution(engine, runs, graph, steps=3, grid=g) for g in ("clean_end", "corrupted_end")}
    lhs = 3 * (three["clean_end"] - three["corrupted_end"])
    rhs = one["clean_end"] - one["corrupted_end"]
    assert float(rhs.abs().max()) > 0.1
    assert torch.allclose(lhs, rhs, atol=1e-3 * float(rhs.abs().max()))


def test_per_position_key_edge_sits_after_the_earlier_occurrence(tmp_path):
    """Per-position EAP-IG (``positions=each``) on toy-induction: the prompt is ``[BOS] R R[:m]``
    (m = seq_len - 1), so the induction head at END attends to the token after the earlier
    occurrence of the last token, position ``PREV + 1 = seq_len``, and its key there reads the
    ``prev`` subspace head 0.0 wrote at that position: the planted edge 0.0 -> 1.0<k> must score
    at that position only. The table has one row per (edge, position) and an int ``position``;
    the circuit flag ranks rows; the CLI table and the plot take it; exact refuses."""
    from headscope.circuits.methods import run_circuit_method
    from headscope.cli.circuit import edge_table
    from headscope.errors import HeadscopeError
    from headscope.plots.circuit import edge_circuit_graph
    from headscope.results.edge_scores import read_edge_scores

    model = hs.load_model("toy-induction")
    task = InductionContrastTask(n_prompts=4, seq_len=6, seed=0)
    batch = task.batch(model)
    n_pos = batch.clean.shape[1]
    assert (batch.positions["PREV"] + 1 == 6).all()  # the hand position the test expects
    edges = run_circuit_method("eap_ig", model, task, positions="each", top_edges=7)
    n_edges = len(EdgeGraph.of(model).edges)
    assert len(edges) == n_edges * n_pos and edges["position"].dtype.kind == "i"
    assert int(edges["circuit"].sum()) == 7
    key = edges[(edges["sender"] == "a0.h0") & (edges["receiver"] == "a1.h0") & (edges["receiver_input"] == "k")]
    by_pos = dict(zip(key["position"], key["score"], strict=True))
    assert by_pos[6] < -1.0, f"the planted key edge at position 6: {by_pos}"
    assert all(abs(v) < 1e-3 * abs(by_pos[6]) for p, v in by_pos.items() if p != 6), by_pos
    path = edges.to_parquet(tmp_path / "e.parquet")
    back = read_edge_scores(path)
    assert back["position"].tolist() == edges["position"].tolist()
    table = edge_table(back, 5)
    assert table.row_count == 5
    assert any("@" in str(c) for c in table.columns[1]._cells)
    fig = edge_circuit_graph(back)
    assert any("at positions" in (t.text[0] if t.text is not None else "") for t in fig.data if t.mode == "lines")
    with pytest.raises(HeadscopeError, match="whole edges only"):
        run_circuit_method("exact", model, task, positions="each")
    with pytest.raises(HeadscopeError, match="positions must be one of"):
        run_circuit_method("eap", model, task, positions="every")


def test_token_routes_follow_the_induction_head_to_the_token_after_the_earlier_occurrence(tmp_path):
    """toy-induction, ``routes level=token``: the prediction at END (position 11 of ``[BOS] R
    R[:5]``) is written by the induction head 1.0 from the position after the earlier occurrence
    of the last token (PREV + 1 = 6: its key matches there, its value carries the answer). So on
    every prompt the route's only kept head edge into END's layer-1 state is x1[6] -> x1.mid[11]
    via a1.h0; the MLPs are zero (no MLP edge at all), and from position 6 the route continues to
    the embedding there. The table round-trips, the CLI table and the plot read it."""
    from headscope.circuits.methods import run_circuit_method
    from headscope.cli.circuit import edge_table
    from headscope.plots.circuit import edge_circuit_graph
    from headscope.results.edge_scores import read_edge_scores

    model = hs.load_model("toy-induction")
    task = InductionContrastTask(n_prompts=4, seq_len=6, seed=0)
    batch = task.batch(model)
    assert (batch.end == 11).all() and (batch.positions["PREV"] + 1 == 6).all()
    edges = run_circuit_method("routes", model, task, level="token")
    kept = edges[edges["circuit"]]
    for p in range(4):
        mine = kept[kept["prompt"] == p]
        into_end = mine[(mine["receiver"] == "x1.mid") & (mine["position"] == 11) & mine["via"].str.startswith("a")]
        assert list(zip(into_end["via"], into_end["source_position"], strict=True)) == [("a1.h0", 6)]
        assert ((mine["receiver"] == "x0.mid") & (mine["position"] == 6) & (mine["via"] == "resid")).any()
    assert not edges["via"].str.startswith("m").any()
    back = read_edge_scores(edges.to_parquet(tmp_path / "r.parquet"))
    assert back.provenance["options"]["level"] == "token"
    assert "x1[6] -a1.h0-> x1.mid[11]" in " ".join(str(c) for c in edge_table(back, 50).columns[1]._cells)
    fig = edge_circuit_graph(back)
    assert any("via a1.h0" in (t.text[0] if t.text is not None else "") for t in fig.data if t.mode == "lines")
