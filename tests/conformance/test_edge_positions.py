"""Per-position EAP (``positions="each"``) against raw Hugging Face finite differences.

An edge ``s -> r`` at position ``p``: the clean run with the receiver input reading
``clean residual + eps * delta_s`` at position ``p`` only (every other position, and every other
input, clean), by the module hooks of ``raw_edges.py``. Per-position EAP must be the derivative
of the raw metric in ``eps`` there, and the per-position scores must sum to the summed score.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits import attribution
from headscope.circuits.attribution import edge_attribution
from headscope.circuits.exact import prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine

from .conftest import assert_close
from .raw_edges import edge_logits, layer_inputs, sender_deltas
from .raw_hf import logit_diff


def _pick(graph: EdgeGraph, summed: torch.Tensor) -> list[int]:
    """For each receiver kind (q, k, v, MLP, logits), its edge of largest |summed EAP|."""
    out = []
    for kind, act in (("head", "q"), ("head", "k"), ("head", "v"), ("mlp", "in"), ("logits", "in")):
        idx = [i for i, e in enumerate(graph.edges) if e.receiver.kind == kind and e.receiver.input == act]
        out.append(max(idx, key=lambda i: abs(float(summed[i]))))
    return out


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2"])
def test_per_position_eap_is_the_single_position_derivative(fam, zoo_cache, prompts, monkeypatch):
    """llama (GQA), gpt2 (LayerNorm, biases), gemma2 (post-norms): for one edge of each receiver
    kind, at every position, EAP at that position equals the Richardson-extrapolated central
    difference of the raw metric with the sender's delta added at that position only; over all
    edges the per-position scores sum to the summed score. (Rows are right-padded, END = 11, 9, 10:
    the positions after a row's END are covered by the same raw hooks.)"""
    pair = zoo_cache[fam]
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    each = edge_attribution(engine, runs, graph, steps=1, positions="each")
    summed = edge_attribution(engine, runs, graph, steps=1)
    monkeypatch.setattr(attribution, "RECEIVER_CHUNK", 5)  # receivers over several chunks (the zoo has < 64)
    assert_close(edge_attribution(engine, runs, graph, steps=1, positions="each"), each, "5 receivers per chunk", tol=1e-5)
    n_pos = batch.clean.shape[1]
    assert each.shape == (len(graph.edges), n_pos)
    assert_close(each.sum(1), summed, "sum over positions of per-position EAP vs summed EAP", tol=1e-4)
    deltas = sender_deltas(raw, batch.clean, batch.corrupted)
    resid_in = layer_inputs(raw, batch.clean)
    base = logit_diff(raw.run(batch.clean).logits, batch.end, batch.answer, batch.wrong)
    pick = _pick(graph, summed)
    scales = (5e-3, -5e-3, 1e-2, -1e-2)
    m = torch.empty(len(scales), len(pick), n_pos)
    for j, scale in enumerate(scales):
        for a, i in enumerate(pick):
            e = graph.edges[i]
            r = e.receiver
            for p in range(n_pos):
                one = torch.zeros_like(deltas[e.sender.name])
                one[:, p] = deltas[e.sender.name][:, p]
                logits = edge_logits(raw, batch.clean, scale * one, r.kind, r.layer, r.input, r.unit, resid_in)
                m[j, a, p] = (logit_diff(logits, batch.end, batch.answer, batch.wrong) - base).mean()
    central = (m[0] - m[1]) / 1e-2, (m[2] - m[3]) / 2e-2
    want = (4 * central[0] - central[1]) / 3
    assert want.abs().max() > 1e-1, "the reference derivatives should not vanish"
    tol = 1e-3 + 2e-3 * float(want.abs().max())
    assert_close(each[pick], want, f"per-position EAP vs single-position finite difference ({fam})", tol=tol)
