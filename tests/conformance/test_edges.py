"""Exact edge patching equals raw Hugging Face edge patching by module hooks (``raw_edges.py``).

Every edge of the graph (embedding, heads and MLPs into every later head's q, every KV head's k
and v, every MLP and the logits) is patched in the noising direction: the clean run with one
receiver input reading ``clean residual + (corrupted - clean sender output)``. The prompts share
a 5-token prefix and have ragged END positions, so the engine's windows and prefix reuse run.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.attribution import edge_attribution
from headscope.circuits.exact import exact_edge_effects, prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine

from .conftest import REFUSED, assert_close
from .raw_edges import FixedTask, edge_logits, layer_inputs, sender_deltas
from .raw_hf import logit_diff


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
        # all edges in as few forwards as fit, and in chunks of 7 that mix receivers of several blocks
        return exact_edge_effects(engine, runs, graph.edges), exact_edge_effects(engine, runs, graph.edges, slices=7)

    got = hs_call(run)
    if got is REFUSED:
        return
    want = raw_edge_effects(raw, batch, graph.edges)[0]
    assert want.abs().max() > 1e-2, "the reference edges should have effects"
    assert_close(got[0], want, f"edge effect (edge, row) over {len(graph.edges)} edges", tol=2e-4)
    assert_close(got[1], want, f"edge effect (edge, row), 7 edges per forward, over {len(graph.edges)} edges", tol=2e-4)


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


@pytest.mark.capability("circuit_evaluation")
def test_removed_edges_interpolate_clean_and_corrupted(family, pair, prompts, hs_call):
    """The model with edges removed (patched to the corrupted run, ACDC semantics): none removed is
    the raw clean run; one removed is raw edge patching of that edge, run from the embedding and
    restarted at the edge's receiver layer from the recorded clean pass (as greedy pruning does);
    all removed is the raw corrupted run (families without post-norms, where head outputs sum to
    the sublayer output)."""
    from headscope.circuits.patched_graph import GraphPrefix, graph_metric

    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    runs = hs_call(lambda: prepare(engine, batch.clean, batch.corrupted, graph))
    if runs is REFUSED:
        return
    metric = lambda toks: logit_diff(raw.run(toks).logits, batch.end, batch.answer, batch.wrong)  # noqa: E731
    n_edges = len(graph.edges)
    none = torch.zeros(n_edges, dtype=torch.bool)
    clean_pass = GraphPrefix()
    assert_close(graph_metric(engine, runs, graph, none, record=clean_pass), metric(batch.clean),
                 "no edge removed vs raw clean run")
    if not raw.post_norms:
        assert_close(graph_metric(engine, runs, graph, ~none), metric(batch.corrupted), "all edges removed vs raw corrupted run")
    pick = list(range(0, n_edges, max(1, n_edges // 8)))
    want = raw_edge_effects(raw, batch, [graph.edges[i] for i in pick])[0] + metric(batch.clean)
    for j, i in enumerate(pick):
        one = none.clone()
        one[i] = True
        assert_close(graph_metric(engine, runs, graph, one), want[j], f"only {graph.edges[i].key} removed vs raw edge patching")
        assert_close(graph_metric(engine, runs, graph, one, start=clean_pass), want[j],
                     f"only {graph.edges[i].key} removed, restarted at layer {graph.edges[i].receiver.layer}, vs raw edge patching")
    # pruning's case: the recorded pass already removes edges (every edge into layer 0), the trial one
    # more downstream; restarted from the record it equals the run from the embedding (checked above)
    upstream_removed = torch.tensor([e.receiver.layer == 0 for e in graph.edges])
    upstream = GraphPrefix()
    graph_metric(engine, runs, graph, upstream_removed, record=upstream)
    for i in (i for i in pick if graph.edges[i].receiver.layer >= 1):
        trial = upstream_removed.clone()
        trial[i] = True
        assert_close(graph_metric(engine, runs, graph, trial, start=upstream), graph_metric(engine, runs, graph, trial),
                     f"layer-0 inputs and {graph.edges[i].key} removed: restarted vs from the embedding")


def _hf_head_weights(raw, layer: int) -> dict[str, list[torch.Tensor]]:
    """Per-head W_Q (H), W_K, W_V (KV heads), W_O (H) of one layer, read from the HF modules and
    written for row vectors (x @ W): (d_model, d_head) and (d_head, d_model)."""
    attn, dh = raw.attn(layer), raw.d_head
    if raw.type == "gpt2":  # Conv1D c_attn: x @ weight, columns [q | k | v], heads-major
        w, o = attn.c_attn.weight.detach(), attn.c_proj.weight.detach()
        d = raw.d_model
        cols = lambda base, i: w[:, base + i * dh: base + (i + 1) * dh]  # noqa: E731
        return {"q": [cols(0, h) for h in range(raw.n_heads)], "k": [cols(d, h) for h in range(raw.n_kv)],
                "v": [cols(2 * d, h) for h in range(raw.n_kv)], "o": [o[h * dh:(h + 1) * dh] for h in range(raw.n_heads)]}
    rows = lambda lin, i: lin.weight.detach()[i * dh:(i + 1) * dh].T  # noqa: E731  (nn.Linear: x @ weight.T)
    return {"q": [rows(attn.q_proj, h) for h in range(raw.n_heads)], "k": [rows(attn.k_proj, g) for g in range(raw.n_kv)],
            "v": [rows(attn.v_proj, g) for g in range(raw.n_kv)],
            "o": [attn.o_proj.weight.detach()[:, h * dh:(h + 1) * dh].T for h in range(raw.n_heads)]}


def _hf_norm(raw, module) -> torch.Tensor:  # noqa: ANN001
    """A norm's linear part as a matrix, by hand: LayerNorm centres; Gemma multiplies by 1 + weight."""
    d = raw.d_model
    if module is None:
        return torch.eye(d)
    w = module.weight.detach().float()
    w = 1.0 + w if raw.type.startswith("gemma") else w
    centre = torch.eye(d) - 1.0 / d if isinstance(module, torch.nn.LayerNorm) else torch.eye(d)
    return centre @ torch.diag(w)


@pytest.mark.parametrize("fam", ["llama", "gpt2", "qwen3", "gemma2"])
def test_composition_scores_match_a_hand_formula(fam, zoo_cache):
    """Q/K/V composition (Elhage et al. 2021) from HF weights by hand: repeat-kv head mapping
    (query head h reads KV head h // group), ln1 folded as centre * weight (1 + weight on Gemma),
    Gemma-2's post-attention norm on the writer, Qwen3's per-head q/k-norm weights; k/v receivers
    are KV heads with their group's query heads stacked."""
    from headscope.circuits.composition import composition_scores

    pair = zoo_cache[fam]
    raw, hs_model = pair.raw, pair.hs
    graph = EdgeGraph.of(hs_model)
    edges, got = composition_scores(hs_model, graph)
    W = {layer: _hf_head_weights(raw, layer) for layer in range(raw.n_layers)}

    def ln1(layer: int) -> torch.Tensor:
        return _hf_norm(raw, raw.input_norm(layer))

    def qk(layer: int, h: int) -> torch.Tensor:
        g = h // raw.group
        wq, wk = ln1(layer) @ W[layer]["q"][h], ln1(layer) @ W[layer]["k"][g]
        if raw.type == "qwen3":
            wq, wk = wq * raw.attn(layer).q_norm.weight.detach(), wk * raw.attn(layer).k_norm.weight.detach()
        return wq @ wk.T

    def ov_in(layer: int, h: int) -> torch.Tensor:
        return ln1(layer) @ W[layer]["v"][h // raw.group] @ W[layer]["o"][h]

    def ov_out(layer: int, h: int) -> torch.Tensor:
        post = _hf_norm(raw, raw.post_attn_norm(layer)) if raw.post_norms else torch.eye(raw.d_model)
        return W[layer]["v"][h // raw.group] @ W[layer]["o"][h] @ post

    def comp(left: torch.Tensor, rights: list[torch.Tensor]) -> float:
        num = torch.stack([(left @ r).norm() ** 2 for r in rights]).sum().sqrt()
        return float(num / (left.norm() * torch.stack([r.norm() ** 2 for r in rights]).sum().sqrt()))

    want = []
    for e in edges:
        s, r = e.sender, e.receiver
        left = ov_out(s.layer, s.unit)
        members = [h for h in range(raw.n_heads) if h // raw.group == r.unit]
        if r.input == "q":
            want.append(comp(left, [qk(r.layer, r.unit)]))
        elif r.input == "k":
            want.append(comp(left, [qk(r.layer, h).T for h in members]))
        else:
            want.append(comp(left, [ov_in(r.layer, h) for h in members]))
    assert len(edges) > 10 and {e.receiver.input for e in edges} == {"q", "k", "v"}
    assert_close(got, torch.tensor(want), "composition scores (edge)", tol=1e-4)


METHOD_OPTIONS = {"eap": {}, "eap_ig": {"steps": 2}, "exact": {}, "verified": {"candidates": 4, "curve": False},
                  "composition": {}, "routes": {}}
VARIANTS = [("eap", {"positions": "each"}), ("eap_ig", {"steps": 2, "positions": "each"}), ("routes", {"level": "token"}),
            ("routes", {"aggregate": "reference"})]
"""Options that change the table's shape (per-position rows, token-level routes): run on every family too."""


@pytest.mark.capability("circuit_methods")
def test_every_circuit_method_runs(family, pair, prompts, hs_call, tmp_path):
    """Each registered circuit method runs and writes/reads EdgeScores; where a method is exact
    (``exact``, the verified edges) its numbers were checked against raw HF above."""
    from headscope.circuits.methods import CIRCUIT_METHODS, load_builtin_methods, run_circuit_method
    from headscope.results.edge_scores import read_edge_scores

    load_builtin_methods()
    task = FixedTask(prompts.batch)
    runs = [(name, METHOD_OPTIONS.get(name, {})) for name in CIRCUIT_METHODS] + VARIANTS
    for i, (name, opts) in enumerate(runs):
        res = hs_call(lambda name=name, opts=opts: run_circuit_method(name, pair.hs, task, **opts))
        if res is REFUSED:
            return
        assert len(res) > 0 and res["score"].notna().all(), name
        back = read_edge_scores(res.to_parquet(tmp_path / f"{name}{i}.parquet"))
        assert back.provenance["analyzer"] == f"circuit:{name}" and len(back) == len(res)
