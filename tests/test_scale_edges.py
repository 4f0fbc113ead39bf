"""Sharded exact edge patching (issues 13/14): parts merged == one process, checked against raw
Hugging Face edge patching by module hooks; ``headscope circuit --shard`` and ``headscope merge``
of EdgeScores parts with their refusals; ``world_size`` in single-process provenance.

References: raw HF edge patching written with module hooks (``tests/conformance/raw_edges.py``,
no headscope code) for the numbers; the unsharded run for the property that splitting changes
nothing; the provenance is read back with pyarrow directly, not through headscope's reader.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cli_harness import run_main

import headscope
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.methods import run_circuit_method
from headscope.errors import HeadscopeError
from headscope.results.edge_scores import read_edge_scores
from headscope.scale import Shard, merge_parts, part_path, run_shard
from headscope.tasks import make_task
from headscope.toy.zoo import build_zoo_model

EDGE_IDS = ("sender", "receiver", "receiver_input")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Zoo Llama (3 layers, 4 query heads on 2 KV heads: GQA) as headscope and as raw HF models."""
    from tests.conformance.raw_hf import RawHF

    directory = build_zoo_model("llama", tmp_path_factory.mktemp("zoo") / "llama", seed=0)
    return headscope.load_model(str(directory)), RawHF(directory)


@pytest.fixture(scope="module")
def contrast():
    return make_task("induction_contrast", n_prompts=4, seed=1)


def assert_same_edges(merged, full) -> None:
    """Same edges in the same order, scores within 1e-6, the same circuit flag."""
    assert list(merged.columns) == list(full.columns)
    assert merged[list(EDGE_IDS)].values.tolist() == full[list(EDGE_IDS)].values.tolist()
    for col in ("score", "exact"):
        np.testing.assert_allclose(merged[col].to_numpy(float), full[col].to_numpy(float), rtol=0, atol=1e-6, err_msg=col)
    assert merged["circuit"].tolist() == full["circuit"].tolist()


def raw_edge_effect(raw, batch, edge, deltas, resid_in, base) -> float:
    """Prompt-mean raw metric(clean run, one receiver input patched) - metric(clean run)."""
    from tests.conformance.raw_edges import edge_logits
    from tests.conformance.raw_hf import logit_diff

    r = edge.receiver
    logits = edge_logits(raw, batch.clean, deltas[edge.sender.name], r.kind, r.layer, r.input, r.unit, resid_in)
    return float((logit_diff(logits, batch.positions["END"], batch.answer, batch.wrong) - base).mean())


def test_exact_shards_merged_equal_one_process_and_raw_hf(zoo, contrast):
    from tests.conformance.raw_edges import layer_inputs, sender_deltas
    from tests.conformance.raw_hf import logit_diff

    model, raw = zoo
    full = run_circuit_method("exact", model, contrast, top_edges=12)
    parts = [run_shard("circuit:exact", model, contrast, Shard(i, 3), top_edges=12) for i in range(3)]
    # 4 receiver blocks (3 layers + the logits), round-robin: shard 0 owns blocks 0 and 3
    assert [p.provenance["shard"]["units"] for p in parts] == [[0, 3], [1], [2]]
    for part in parts:  # each part holds exactly the one-process run's edges into its own blocks
        want = full[full["receiver_layer"].isin(part.provenance["shard"]["units"])].reset_index(drop=True)
        assert part[list(EDGE_IDS)].values.tolist() == want[list(EDGE_IDS)].values.tolist()
        np.testing.assert_array_equal(part["score"].to_numpy(), want["score"].to_numpy())
        assert part["score"].notna().all() and part.provenance["shard"]["rows"] == len(full)
    merged = merge_parts(parts[::-1])
    assert_same_edges(merged, full)
    assert pd.DataFrame(merged).equals(pd.DataFrame(full)) and list(merged.dtypes) == list(full.dtypes)
    assert int(merged["circuit"].sum()) == 12 == merged.provenance["choices"]["circuit_edges"]
    assert merged.provenance["world_size"] == 3 and merged.provenance["sharding"]["unit"] == "receiver block"
    assert merged.provenance["options"] == full.provenance["options"] and "shard" not in merged.provenance

    # independent reference: raw HF edge patching by module hooks, on edges of every receiver kind
    # (q of a query head, k and v of a KV head, an MLP, the logits) and every sender kind
    graph = EdgeGraph.of(model)
    keys = ["input->a0.h1<q>", "a0.h2->a1.kv1<k>", "m0->a2.kv0<v>", "a1.h3->m2<in>", "m1->logits<in>",
            "a2.h0->logits<in>", "a0.h0->a2.h3<q>"]
    batch = contrast.batch(model)
    deltas, resid_in = sender_deltas(raw, batch.clean, batch.corrupted), layer_inputs(raw, batch.clean)
    base = logit_diff(raw.run(batch.clean).logits, batch.positions["END"], batch.answer, batch.wrong)
    index = {e.key: i for i, e in enumerate(graph.edges)}
    want = np.array([raw_edge_effect(raw, batch, graph.edges[index[k]], deltas, resid_in, base) for k in keys])
    got = merged["score"].to_numpy(float)[[index[k] for k in keys]]
    assert np.abs(want).max() > 1e-2, "the reference edges should have effects"
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_exact_receiver_layers_and_unshardable_methods(zoo, contrast):
    model, _ = zoo
    with pytest.raises(HeadscopeError, match="only 4 receiver block"):
        run_shard("circuit:exact", model, contrast, Shard(0, 5))
    with pytest.raises(HeadscopeError, match=r"receiver_layers \[4\] out of range"):
        run_circuit_method("exact", model, contrast, receiver_layers=[0, 4])
    for method in ("verified", "eap_ig"):
        with pytest.raises(HeadscopeError, match=f"circuit method '{method}' cannot be split.*sharded circuit methods: exact"):
            run_shard(f"circuit:{method}", model, contrast, Shard(0, 2))


# ---------------------------------------------------------------- CLI: --shard, merge, refusals
def cli(args, capsys):
    code, _, err = run_main(args, capsys)
    return code, err.strip()


CIRCUIT = ["circuit", "--model", "zoo-llama", "--task", "induction_contrast", "--method", "exact",
           "-o", "n_prompts=4", "-o", "seed=1", "-o", "top_edges=8"]


def stored_provenance(path) -> dict:
    """The provenance JSON in the Parquet schema metadata, read with pyarrow alone."""
    return json.loads(pq.read_schema(path).metadata[b"headscope"])


def test_cli_circuit_shards_merge_equal_one_process(tmp_path, capsys):
    out, single = tmp_path / "edges.parquet", tmp_path / "single.parquet"
    for i in range(2):
        assert cli([*CIRCUIT, "--out", str(out), "--shard", f"{i}/2"], capsys)[0] == 0
    parts = [part_path(out, Shard(i, 2)) for i in range(2)]
    assert all(p.exists() for p in parts) and not out.exists()
    plot = tmp_path / "edges.html"
    assert cli(["merge", str(parts[1]), str(parts[0]), "--out", str(out), "--plot", str(plot)], capsys)[0] == 0
    assert "Plotly.newPlot" in plot.read_text()
    assert cli([*CIRCUIT, "--out", str(single)], capsys)[0] == 0
    whole = read_edge_scores(single)
    for i, part in enumerate(map(read_edge_scores, parts)):  # blocks 0..3 round-robin: shard i owns i and i + 2
        assert sorted(set(part["receiver_layer"])) == [i, i + 2] and part["score"].notna().all()
        assert len(part) == int(whole["receiver_layer"].isin([i, i + 2]).sum())
    assert_same_edges(read_edge_scores(out), whole)
    assert pd.DataFrame(read_edge_scores(out)).equals(pd.DataFrame(whole))
    assert stored_provenance(out)["world_size"] == 2 and stored_provenance(single)["world_size"] == 1


def test_merge_refuses_bad_edge_part_sets(tmp_path, capsys):
    out, other = tmp_path / "e.parquet", tmp_path / "kl.parquet"
    for i in range(3):
        assert cli([*CIRCUIT, "--out", str(out), "--shard", f"{i}/3"], capsys)[0] == 0
    parts = [part_path(out, Shard(i, 3)) for i in range(3)]
    assert cli([*CIRCUIT, "-o", "metric=kl", "--out", str(other), "--shard", "2/3"], capsys)[0] == 0
    single = tmp_path / "single.parquet"
    assert cli([*CIRCUIT, "--out", str(single)], capsys)[0] == 0
    cases = [
        ([parts[0], parts[2]], "missing shard(s) 1/3"),
        ([*parts, parts[1]], "shard 1/3 is given twice"),
        ([parts[0], parts[1], part_path(other, Shard(2, 3))], "differs from"),
        ([single, *parts], "is not a shard part"),
    ]
    for files, message in cases:
        code, err = cli(["merge", *map(str, files), "--out", str(tmp_path / "m.parquet")], capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "0/5"], "error: shard 0/5: this run has only 4 receiver block(s) to split; use at most 4 shards."),
    (["--method", "verified", "--shard", "0/2"],
     "error: circuit method 'verified' cannot be split into shards: run it without --shard (sharded circuit methods: exact)."),
    (["--shard", "0/2", "--plot", "p.html"], "error: --plot needs the whole result"),
])
def test_cli_circuit_shard_refusals_are_one_line(tmp_path, capsys, args, message):
    base = CIRCUIT[:-2] if "verified" in args else CIRCUIT  # verified has no top_edges option
    code, err = cli([*base, "--out", str(tmp_path / "x.parquet"), *args], capsys)
    assert code == 2 and err.startswith(message) and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_single_process_results_record_world_size_one(tmp_path, capsys, contrast):
    """`headscope score`, `headscope circuit` and the Python API: one process, world_size 1."""
    from headscope.analyzers import run_analyzer

    score, circuit = tmp_path / "ap.parquet", tmp_path / "eap.parquet"
    assert cli(["score", "--model", "zoo-llama", "--task", "induction_contrast", "-a", "activation_patching",
                "-o", "n_prompts=4", "--out", str(score)], capsys)[0] == 0
    assert cli([*CIRCUIT[:6], "eap", "-o", "n_prompts=4", "--out", str(circuit)], capsys)[0] == 0
    api = run_analyzer("pattern_scores", headscope.load_model("zoo-llama"), make_task("induction", n_prompts=2, seq_len=8))
    api_file = api.to_parquet(tmp_path / "api.parquet")
    for path in (score, circuit, api_file):
        prov = stored_provenance(path)
        assert prov["world_size"] == 1 and "shard" not in prov and "sharding" not in prov, path.name
