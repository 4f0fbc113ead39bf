"""Exact edge patching equals raw Hugging Face edge patching by module hooks (``raw_edges.py``).

Every edge of the graph (embedding, heads and MLPs into every later head's q, every KV head's k
and v, every MLP and the logits) is patched in the noising direction: the clean run with one
receiver input reading ``clean residual + (corrupted - clean sender output)``. The prompts share
a 5-token prefix and have ragged END positions, so the engine's windows and prefix reuse run.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.exact import exact_edge_effects, prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine

from .conftest import REFUSED, assert_close
from .raw_edges import edge_logits, layer_inputs, sender_deltas
from .raw_hf import logit_diff


def raw_edge_effects(raw, batch, edges, scale: float = 1.0) -> torch.Tensor:
    """(len(edges), n) raw metric(patched) - metric(clean)."""
    deltas = sender_deltas(raw, batch.clean, batch.corrupted)
    resid_in = layer_inputs(raw, batch.clean)
    base = logit_diff(raw.run(batch.clean).logits, batch.end, batch.answer, batch.wrong)
    out = torch.empty(len(edges), batch.n)
    for i, e in enumerate(edges):
        r = e.receiver
        logits = edge_logits(raw, batch.clean, scale * deltas[e.sender.name], r.kind, r.layer, r.input, r.unit, resid_in)
        out[i] = logit_diff(logits, batch.end, batch.answer, batch.wrong) - base
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
    want = raw_edge_effects(raw, batch, graph.edges)
    assert want.abs().max() > 1e-2, "the reference edges should have effects"
    assert_close(got, want, f"edge effect (edge, row) over {len(graph.edges)} edges", tol=2e-4)
