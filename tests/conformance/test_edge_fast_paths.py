"""The fast paths of exact edge patching, and the benchmark's one-forward-per-edge baseline.

* Edges into the logits run only the model's tail at END (``PatchEngine.final_logits``: the
  final norm, the unembedding and final-logit soft-capping of the model itself). Checked with
  the KL metric (every vocabulary entry counts, not only two logits) against raw Hugging Face
  edge patching with a KL written here by hand, on a pre-norm family (llama), GPT-2 (LayerNorm
  with bias) and Gemma-2 (post-norms, final soft-capping 3.0); also with ``prefix_reuse=False``,
  where logits edges take the old route (a run of the last block).
* ``start_groups``: which edges share a forward, against hand-worked cases.
* ``benchmarks/bench_circuits.py``'s baseline (one full forward per edge, TransformerBridge hooks
  only) equals raw HF edge patching, and the engine equals it on every edge.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from headscope.circuits.exact import exact_edge_effects, prepare, start_groups
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine

from .conftest import assert_close
from .raw_edges import edge_logits, layer_inputs, sender_deltas
from .raw_hf import end_rows
from .test_edges import raw_edge_effects

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_circuits.py"


def _neg_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(b,) ``-KL(softmax(ref) || softmax(logits))`` per row, by hand."""
    p = torch.softmax(ref_logits.double(), -1)
    return -(p * (torch.log(p) - torch.log_softmax(logits.double(), -1))).sum(-1)


def _kl_engine_metric(clean_end: torch.Tensor):  # noqa: ANN202
    """The engine's per-row metric for stacked slices: ``-KL(clean || run)`` at END."""
    ref = clean_end.detach()
    return lambda logits: _neg_kl(ref.repeat(logits.shape[0] // ref.shape[0], 1), logits).float()


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2"])
def test_logits_edges_with_kl_match_raw_hf(fam, zoo_cache, prompts):
    pair = zoo_cache[fam]
    raw, batch = pair.raw, prompts.batch
    graph = EdgeGraph.of(pair.hs)
    # every edge into the logits, and a few others so that both routes share one call
    pick = [e for e in graph.edges if e.receiver.kind == "logits"] + graph.edges[::37]
    clean_end = end_rows(raw.run(batch.clean).logits, batch.end)
    deltas = sender_deltas(raw, batch.clean, batch.corrupted)
    resid_in = layer_inputs(raw, batch.clean)
    want = torch.stack([
        _neg_kl(clean_end, end_rows(edge_logits(raw, batch.clean, deltas[e.sender.name], e.receiver.kind, e.receiver.layer,
                                                e.receiver.input, e.receiver.unit, resid_in), batch.end))
        for e in pick
    ])
    assert want.abs().max() > 1e-2, "the reference edges should have effects"
    for reuse in (True, False):
        engine = PatchEngine(pair.hs, batch.end, batch.logit_diff, prefix_reuse=reuse)
        runs = prepare(engine, batch.clean, batch.corrupted, graph)
        engine.metric = _kl_engine_metric(runs.clean.end_logits)
        got = exact_edge_effects(engine, runs, pick)
        assert_close(got, want, f"-KL effect (edge, row), prefix_reuse={reuse}", tol=2e-5)
        assert_close(exact_edge_effects(engine, runs, pick, slices=3), want, "-KL effect, 3 edges per forward", tol=2e-5)


def _forwards(groups: list[list[int]], starts: list[int]) -> list[tuple[int, list[int]]]:
    return [(min(starts[i] for i in g), sorted(g)) for g in groups]


def test_start_groups_by_hand():
    """Edges sorted by start block, cut where a forward's cost ``blocks * (overhead + slices *
    tokens)`` says so (worked by hand, 10 blocks)."""
    starts = [8, 2, 8, 9, 2]
    # no fixed cost: every start block its own forward (nothing reruns earlier blocks)
    assert _forwards(start_groups(starts, 10, 5.0, 0.0, 100), starts) == [(2, [1, 4]), (8, [0, 2]), (9, [3])]
    # a huge fixed cost: one forward from block 2
    assert _forwards(start_groups(starts, 10, 5.0, 1e6, 100), starts) == [(2, [0, 1, 2, 3, 4])]
    # overhead 20, 5 tokens a slice: blocks 8 and 9 apart cost 2*(20+10) + 1*(20+5) = 85, together
    # 2*(20+15) = 70; block 2 joining them costs 8*(20+25) = 360 > 8*(20+10) + 70 = 310
    assert _forwards(start_groups(starts, 10, 5.0, 20.0, 100), starts) == [(2, [1, 4]), (8, [0, 2, 3])]
    # at most 2 slices a forward
    assert _forwards(start_groups(starts, 10, 5.0, 1e6, 2), starts) == [(2, [1, 4]), (8, [0, 2]), (9, [3])]
    # a group larger than a forward pays a forward per chunk: apart, 1 forward from block 2 and 1
    # from block 9 (8 + 1 blocks of fixed cost); together, 2 forwards from block 2 (16)
    assert _forwards(start_groups([2, 9, 9], 10, 5.0, 1e6, 2), [2, 9, 9]) == [(2, [0]), (9, [1, 2])]


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_bench_baseline_matches_raw_hf_and_the_engine(fam, zoo_cache, prompts):
    """The benchmark's naive baseline (bridge hooks, one full forward per edge) is edge patching:
    raw HF on a spread of edges; the engine then equals it on every edge."""
    spec = importlib.util.spec_from_file_location("bench_circuits", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pair = zoo_cache[fam]
    batch = prompts.batch
    graph = EdgeGraph.of(pair.hs)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # END logits (n, vocab), by hand
        rows = torch.arange(batch.n)
        return logits[rows, batch.answer] - logits[rows, batch.wrong]

    naive = bench.naive_edge_effects(pair.hs, batch.clean, batch.corrupted, batch.end, metric, graph.edges)
    pick = list(range(0, len(graph.edges), 9))
    assert {graph.edges[i].receiver.input for i in pick} == {"q", "k", "v", "in"}
    want = raw_edge_effects(pair.raw, batch, [graph.edges[i] for i in pick])[0]
    assert want.abs().max() > 1e-2
    assert_close(naive[pick], want, "bench baseline vs raw HF edge patching", tol=2e-4)
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    got = exact_edge_effects(engine, prepare(engine, batch.clean, batch.corrupted, graph), graph.edges)
    assert_close(got, naive, f"engine vs bench baseline over {len(graph.edges)} edges", tol=2e-4)
