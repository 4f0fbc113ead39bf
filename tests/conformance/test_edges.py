"""Exact edge patching equals raw Hugging Face edge patching by module hooks (``raw_edges.py``).

Every edge of the graph (embedding, heads and MLPs into every later head's q, every KV head's k
and v, every MLP and the logits) is patched in the noising direction: the clean run with one
receiver input reading ``clean residual + (corrupted - clean sender output)``. The prompts share
a 5-token prefix and have ragged END positions, so the engine's windows and prefix reuse run.
"""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.circuits.attribution import edge_attribution
from headscope.circuits.exact import exact_edge_effects, prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine
from headscope.toy.zoo import build_zoo_hf

from .conftest import REFUSED, assert_close
from .raw_edges import edge_logits, layer_inputs, sender_deltas
from .raw_hf import RawHF, logit_diff


def raw_edge_effects(raw, batch, edges, scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """(len(scales), len(edges), n) raw metric(patched) - metric(clean), the receiver input
    patched to ``clean + scale * delta``."""
    deltas = sender_deltas(raw, batch.clean, batch.corrupted)
    resid_in = layer_inputs(raw, batch.clean)
    base = logit_diff(raw.run(batch.clean).logits, batch.end, batch.answer, batch.wrong)
    out = torch.empty(len(scales), len(edges), batch.n)
    for j, scale in enumerate(scales):
        for i, e in enumerate(edges):
            r = e.receiver
            logits = edge_logits(raw, batch.clean, scale * deltas[e.sender.name], r.kind, r.layer, r.input, r.unit, resid_in)
            out[j, i] = logit_diff(logits, batch.end, batch.answer, batch.wrong) - base
    return out


@pytest.mark.capability("edge_patching")
def test_edge_patching(family, pair, prompts, hs_call):
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)

    def run():  # noqa: ANN202
        runs = prepare(engine, batch.clean, batch.corrupted, graph)
        return exact_edge_effects(engine, runs, graph.edges)

    got = hs_call(run)
    if got is REFUSED:
        return
    want = raw_edge_effects(raw, batch, graph.edges)[0]
    assert want.abs().max() > 1e-2, "the reference edges should have effects"
    assert_close(got, want, f"edge effect (edge, row) over {len(graph.edges)} edges", tol=2e-4)


@pytest.mark.capability("edge_attribution")
def test_eap_is_the_edge_derivative(family, pair, prompts, hs_call):
    """EAP (Syed et al. 2023) of every edge equals the derivative of the raw metric along that one
    edge: central finite differences ``(M(+eps) - M(-eps)) / 2 eps`` (Richardson-extrapolated) with the receiver input
    ``clean + eps * delta`` patched by raw HF hooks."""
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)

    def run():  # noqa: ANN202
        return edge_attribution(engine, prepare(engine, batch.clean, batch.corrupted, graph), graph, steps=1)

    got = hs_call(run)
    if got is REFUSED:
        return
    # every third edge (all receiver kinds and inputs occur), to keep the raw sweep short
    pick = list(range(0, len(graph.edges), 3))
    m = raw_edge_effects(raw, batch, [graph.edges[i] for i in pick], scales=(5e-3, -5e-3, 1e-2, -1e-2)).mean(-1)
    central = (m[0] - m[1]) / 1e-2, (m[2] - m[3]) / 2e-2
    want = (4 * central[0] - central[1]) / 3  # Richardson: truncation error O(eps^4)
    got = got[pick]
    assert want.abs().max() > 1e-1, "the reference derivatives should not vanish"
    tol = 1e-3 + 2e-3 * float(want.abs().max())
    assert_close(got, want, f"EAP vs finite difference per edge over {len(pick)} edges", tol=tol)


@pytest.mark.parametrize("interpolation", ["input", "activations"])
def test_eap_ig_converges_on_a_linear_toy(interpolation, prompts, tmp_path):
    """Zoo Llama with every attention output projection and MLP down projection zeroed: heads and
    MLPs write nothing, so the final residual is the embedding and moves linearly along the
    interpolation path, while the metric (final RMSNorm, unembedding) is not linear in it. The
    edge input -> logits then carries the whole effect, ``M(corrupted) - M(clean)`` by plain raw
    HF runs, and EAP-IG's path integral must converge to it (error O(1/steps)); EAP (1 step) is off."""
    model, tokenizer = build_zoo_hf("llama", seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    batch = prompts.batch
    raw = RawHF(tmp_path)
    metric = lambda toks: logit_diff(raw.run(toks).logits, batch.end, batch.answer, batch.wrong).mean()  # noqa: E731
    want = float(metric(batch.corrupted) - metric(batch.clean))
    hs_model = hs.load_model(str(tmp_path))
    engine = PatchEngine(hs_model, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(hs_model)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    i = graph.edges.index(graph.edge("input", "logits", "in"))
    errors = {s: abs(float(edge_attribution(engine, runs, graph, steps=s, interpolation=interpolation)[i]) - want)
              for s in (1, 4, 32)}
    assert errors[1] > 0.05 * abs(want), f"EAP should be off on this toy: {errors}"
    assert errors[32] < errors[4] < errors[1] and errors[32] < 0.02 * abs(want), f"no convergence to {want:.4f}: {errors}"


@pytest.mark.capability("circuit_evaluation")
def test_removed_edges_interpolate_clean_and_corrupted(family, pair, prompts, hs_call):
    """The model with edges removed (patched to the corrupted run, ACDC semantics): none removed is
    the raw clean run; one removed is raw edge patching of that edge; all removed is the raw
    corrupted run (families without post-norms, where head outputs sum to the sublayer output)."""
    from headscope.circuits.patched_graph import graph_metric

    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    runs = hs_call(lambda: prepare(engine, batch.clean, batch.corrupted, graph))
    if runs is REFUSED:
        return
    metric = lambda toks: logit_diff(raw.run(toks).logits, batch.end, batch.answer, batch.wrong)  # noqa: E731
    n_edges = len(graph.edges)
    none = torch.zeros(n_edges, dtype=torch.bool)
    assert_close(graph_metric(engine, runs, graph, none), metric(batch.clean), "no edge removed vs raw clean run")
    if not raw.post_norms:
        assert_close(graph_metric(engine, runs, graph, ~none), metric(batch.corrupted), "all edges removed vs raw corrupted run")
    pick = list(range(0, n_edges, max(1, n_edges // 8)))
    want = raw_edge_effects(raw, batch, [graph.edges[i] for i in pick])[0] + metric(batch.clean)
    for j, i in enumerate(pick):
        one = none.clone()
        one[i] = True
        assert_close(graph_metric(engine, runs, graph, one), want[j], f"only {graph.edges[i].key} removed vs raw edge patching")
