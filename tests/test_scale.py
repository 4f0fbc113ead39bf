"""Sharded sweeps (issue 14): parts merged == one process, against hand-written hooks; merge refusals.

References: the unsharded run (the property under test is that splitting changes nothing), and
for activation patching a patch written here with TransformerLens hooks on the bridge and the
logit difference computed by hand.
"""

from __future__ import annotations

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest
import torch
from cli_harness import run_main

import headscope
from headscope.analyzers import run_analyzer
from headscope.errors import HeadscopeError
from headscope.results import read_parquet
from headscope.scale import Shard, merge_files, merge_parts, parse_shard, part_path, run_shard
from headscope.tasks import make_task

VALUE_COLUMNS = ("score", "stderr", "raw_metric", "n", "kv_head")


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-induction")


@pytest.fixture(scope="module")
def contrast():
    return make_task("induction_contrast", n_prompts=6, seed=1)


def assert_same(merged, full) -> None:
    """Same rows in the same order, values within 1e-6 (NaN where the full run has NaN)."""
    assert list(merged.columns) == list(full.columns)
    for col in ("metric", "layer", "head"):
        assert merged[col].tolist() == full[col].tolist()
    for col in VALUE_COLUMNS:
        if col in full.columns:
            np.testing.assert_allclose(merged[col].to_numpy(float), full[col].to_numpy(float), rtol=0, atol=1e-6,
                                       equal_nan=True, err_msg=col)


@pytest.mark.parametrize("analyzer,options,count", [
    ("activation_patching", {}, 2),
    ("activation_patching", {"act": "v", "positions": "named"}, 2),
    ("path_patching", {}, 3),
    ("path_patching", {"receivers": "1.0,1.1:k"}, 2),
])
def test_merged_shards_equal_one_process(toy, contrast, analyzer, options, count):
    full = run_analyzer(analyzer, toy, contrast, **options)
    parts = [run_shard(analyzer, toy, contrast, Shard(i, count), **options) for i in range(count)]
    for part in parts:  # each part holds only its own units' rows (and part 0 the run's rows of no unit)
        assert len(part) < len(full)
    merged = merge_parts(parts[::-1])
    assert_same(merged, full)
    assert merged.provenance["world_size"] == count
    assert merged.provenance["options"] == full.provenance["options"]
    assert "shard" not in merged.provenance


TOY_HEADS = [(layer, head) for layer in range(2) for head in range(2)]  # toy-induction: 2 layers x 2 heads


def unit_of(frame, unit: str) -> list:
    return frame["layer"].tolist() if unit == "layer" else list(zip(frame["layer"], frame["head"], strict=True))


@pytest.mark.parametrize("analyzer,options,count,unit,units", [
    ("path_patching", {}, 3, "head", TOY_HEADS),  # sender heads 0.0, 0.1, 1.0, 1.1
    ("path_patching", {}, 4, "head", TOY_HEADS),
    ("activation_patching", {}, 2, "layer", [0, 1]),
    ("activation_patching", {"act": "v", "positions": "named"}, 2, "layer", [0, 1]),
])
def test_part_files_hold_exactly_their_units_rows(toy, contrast, tmp_path, analyzer, options, count, unit, units):
    """Shard I/N owns units I, I+N, ... (written out here); its part file holds exactly the
    one-process run's rows of those units, bit for bit, and no NaN; merged == one process, bit for bit."""
    full = run_analyzer(analyzer, toy, contrast, **options)
    assert not full[["score", "stderr"]].isna().any().any()
    files = []
    for i in range(count):
        mine = units[i::count]
        path = run_shard(analyzer, toy, contrast, Shard(i, count), **options).to_parquet(tmp_path / f"p{i}.parquet")
        part = read_parquet(path)
        files.append(path)
        want = full[[u in mine for u in unit_of(full, unit)]].reset_index(drop=True)
        assert sorted(set(unit_of(part, unit))) == sorted(mine)
        pd.testing.assert_frame_equal(pd.DataFrame(part), pd.DataFrame(want), check_exact=True)
        assert not part.select_dtypes("number").isna().any().any()
        assert part.provenance["shard"]["rows"] == len(full)
    merged = merge_files(files[::-1])
    assert pd.DataFrame(merged).equals(pd.DataFrame(full)) and list(merged.dtypes) == list(full.dtypes)


def test_merge_rebuilds_rows_of_no_unit_and_refuses_bad_rows(toy, contrast):
    """Rows no unit computes (senders outside sender_layers, NaN in one process too) go with part 0;
    a part whose rows disagree with its record, rows given twice, or a missing part are refused."""
    full = run_analyzer("path_patching", toy, contrast, sender_layers=[0])
    parts = [run_shard("path_patching", toy, contrast, Shard(i, 2), sender_layers=[0]) for i in range(2)]
    assert unit_of(parts[1], "head") == [(0, 1)] and unit_of(parts[0], "head") == [(0, 0), (1, 0), (1, 1)]
    assert parts[0][parts[0].layer == 1]["score"].isna().all() and parts[1]["score"].notna().all()
    merged = merge_parts(parts[::-1])
    assert pd.DataFrame(merged).equals(pd.DataFrame(full))
    short = parts[1].iloc[:0]
    with pytest.raises(HeadscopeError, match="has 0 rows but records 1"):
        merge_parts([parts[0], short])
    twice = parts[1].copy()
    twice.provenance = {**parts[1].provenance, "shard": {**parts[1].provenance["shard"], "row_ranges": [[0, 1]]}}
    with pytest.raises(HeadscopeError, match="do not fill the run's rows exactly once"):
        merge_parts([parts[0], twice])
    three = [run_shard("path_patching", toy, contrast, Shard(i, 3)) for i in (0, 2)]
    with pytest.raises(HeadscopeError, match=r"missing shard\(s\) 1/3"):
        merge_parts(three)


def test_sharded_activation_patching_matches_hand_hooks(toy, contrast):
    """z patching of each head by TransformerLens hooks, metric by hand; shards merged."""
    batch = contrast.batch(toy)
    merged = merge_parts([run_shard("activation_patching", toy, contrast, Shard(i, 2)) for i in range(2)])
    bridge = toy.bridge
    rows = torch.arange(batch.clean.shape[0])

    def metric(logits):
        end = logits[rows, batch.end]
        return float((end[rows, batch.answer] - end[rows, batch.wrong]).mean())

    with torch.no_grad():
        _, cache = bridge.run_with_cache(batch.clean)
        clean = metric(bridge(batch.clean))
        corrupted = metric(bridge(batch.corrupted))
        for layer in range(toy.n_layers):
            for head in range(toy.n_heads):
                name = f"blocks.{layer}.attn.hook_z"

                def put(z, hook, head=head, name=name):
                    z = z.clone()
                    z[:, :, head] = cache[name][:, :, head]
                    return z

                patched = metric(bridge.run_with_hooks(batch.corrupted, fwd_hooks=[(name, put)]))
                want = (patched - corrupted) / (clean - corrupted)
                got = merged[(merged.layer == layer) & (merged["head"] == head)]["score"].item()
                assert got == pytest.approx(want, abs=1e-5)


def test_ships_shards_on_planted_refusal_head(tmp_path):
    model = headscope.load_model("toy-refusal")
    from tests.test_ships import _files

    harm, safe = _files(tmp_path)
    task = make_task("safety", source=harm, harmless=safe, n_prompts=6)
    full = run_analyzer("ships", model, task, eps=0.02, layers="0-1")
    parts = [run_shard("ships", model, task, Shard(i, 3), eps=0.02, layers="0-1") for i in range(3)]
    merged = merge_parts(parts)
    assert_same(merged, full)
    assert merged.heads("ships_kl", k=1) == [(1, 1)]  # the planted refusal head
    assert merged.provenance["options"]["layers"] == "0-1" and merged.provenance["options"]["heads"] is None


def test_shard_parsing_and_part_names():
    assert parse_shard("2/8") == Shard(2, 8)
    for bad in ("8/8", "a/2", "1", "0/0", "-1/2"):
        with pytest.raises(HeadscopeError, match="--shard"):
            parse_shard(bad)
    assert part_path("r/x.parquet", Shard(3, 12)).name == "x.shard-0003-of-0012.parquet"
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]


def test_too_many_shards_and_unshardable_analyzer(toy, contrast):
    with pytest.raises(HeadscopeError, match="only 2 layer"):
        run_shard("activation_patching", toy, contrast, Shard(0, 3))
    with pytest.raises(HeadscopeError, match="cannot be split"):
        run_shard("direct_logit_attribution", toy, contrast, Shard(0, 2))


# ---------------------------------------------------------------- CLI: --shard, merge, refusals
def cli(args, capsys):
    code, _, err = run_main(args, capsys)
    return code, err.strip()


SCORE = ["score", "--model", "toy-induction", "--task", "induction_contrast", "-a", "path_patching",
         "-o", "n_prompts=6", "-o", "seed=1"]


def test_cli_shards_merge_and_rerun_one_shard(tmp_path, capsys, toy):
    out = tmp_path / "pp.parquet"
    for i in range(2):
        assert cli([*SCORE, "--out", str(out), "--shard", f"{i}/2"], capsys)[0] == 0
    p0, p1 = part_path(out, Shard(0, 2)), part_path(out, Shard(1, 2))
    assert p0.exists() and p1.exists() and not out.exists()
    before = (p0.stat().st_mtime_ns, p0.read_bytes())
    os.utime(p1, ns=(0, 0))
    assert cli([*SCORE, "--out", str(out), "--shard", "1/2"], capsys)[0] == 0  # rerun one shard
    assert (p0.stat().st_mtime_ns, p0.read_bytes()) == before and p1.stat().st_mtime_ns > 0
    plot = tmp_path / "pp.html"
    assert cli(["merge", str(p1), str(p0), "--out", str(out), "--plot", str(plot)], capsys)[0] == 0
    assert plot.stat().st_size > 0
    full = run_analyzer("path_patching", toy, make_task("induction_contrast", n_prompts=6, seed=1))
    merged = read_parquet(out)
    assert_same(merged, full)
    assert merged.provenance["world_size"] == 2


def test_cli_shard_shows_and_writes_only_its_heads(tmp_path, capsys):
    """shard 1/3 of path patching's 4 sender heads owns head 0.1 only: its table and its file."""
    out = tmp_path / "pp.parquet"
    code, stdout, _ = run_main([*SCORE, "--out", str(out), "--shard", "1/3"], capsys)
    assert code == 0 and "shard 1/3: 1 of 4 sender heads" in stdout
    shown = re.findall(r"│\s+\d+ │\s+(\d+\.\d+) │", stdout)  # the table's head column
    assert shown == ["0.1"] and "nan" not in stdout
    part = read_parquet(part_path(out, Shard(1, 3)))
    assert part["label"].tolist() == ["0.1"] and part["score"].notna().all()
    # part 0 also holds the run's rows of no unit (layer 1 with sender_layers=0, NaN); it shows only its head
    code, stdout, _ = run_main([*SCORE, "-o", "sender_layers=0", "--out", str(out), "--shard", "0/2"], capsys)
    assert code == 0 and "shard 0/2: 1 of 2 sender heads" in stdout
    assert re.findall(r"│\s+\d+ │\s+(\d+\.\d+) │", stdout) == ["0.0"] and "nan" not in stdout
    assert read_parquet(part_path(out, Shard(0, 2)))["label"].tolist() == ["0.0", "1.0", "1.1"]


def test_merge_refuses_bad_part_sets(tmp_path, capsys):
    out = tmp_path / "pp.parquet"
    for i in range(3):
        assert cli([*SCORE, "--out", str(out), "--shard", f"{i}/3"], capsys)[0] == 0
    parts = [part_path(out, Shard(i, 3)) for i in range(3)]
    other = tmp_path / "other.parquet"
    assert cli([*SCORE[:-4], "-o", "n_prompts=5", "-o", "seed=1", "--out", str(other), "--shard", "2/3"], capsys)[0] == 0
    single = tmp_path / "single.parquet"
    assert cli([*SCORE, "--out", str(single)], capsys)[0] == 0
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


def test_cli_shard_errors_name_the_shard(tmp_path, capsys):
    code, err = cli([*SCORE, "--out", str(tmp_path / "x.parquet"), "--shard", "0/9"], capsys)
    assert code == 2 and err.startswith("error: shard 0/9:") and "at most 4 shards" in err
    code, err = cli([*SCORE, "--out", str(tmp_path / "x.parquet"), "--shard", "0/2", "--plot", str(tmp_path / "p.html")], capsys)
    assert code == 2 and "--plot needs the whole result" in err


def test_retrieval_merge_weights_parts_by_counted_trials():
    """Hand formula: the merged score is sum(score_i * n_i) / sum(n_i); records in trial order."""
    from headscope.analyzers.retrieval_heads import merge_shards
    from headscope.results import HeadScores

    a, b = np.array([[0.5, 0.0], [1.0, 0.25]]), np.array([[0.0, 0.0], [0.25, 1.0]])
    parts = []
    for index, (values, n, trials) in enumerate([(a, 2, [0, 2, 4]), (b, 1, [1, 3])]):
        records = [{"trial": t, "counted": t in (0, 2, 1)} for t in trials]
        prov = {"analyzer": "retrieval_heads", "options": {"threshold": 0.3}, "choices": {"trials": records},
                "shard": {"index": index, "count": 2}}
        parts.append(HeadScores.from_matrix(values, model="m", task="needle", analyzer="retrieval_heads",
                                            metric="retrieval", extra={"n": n, "kv_head": 0}, provenance=prov))
    merged = merge_shards(parts)
    np.testing.assert_allclose(merged.matrix("retrieval").to_numpy(), (2 * a + b) / 3, atol=1e-12)
    assert merged["n"].unique().tolist() == [3]
    choices = merged.provenance["choices"]
    assert [r["trial"] for r in choices["trials"]] == [0, 1, 2, 3, 4]
    assert choices["summary"]["n_counted"] == 3 and choices["summary"]["n_trials"] == 5 and choices["summary"]["accuracy"] == pytest.approx(3 / 5)
    assert choices["summary"]["n_heads_above_threshold"] == int((((2 * a + b) / 3) > 0.3).sum())
    # a shard may count no trial (weight 0); a whole run that counts none is an error, not zeros
    zero = [HeadScores.from_matrix(np.zeros((2, 2)), model="m", task="needle", analyzer="retrieval_heads",
                                   metric="retrieval", extra={"n": 0, "kv_head": 0},
                                   provenance={**p.provenance, "options": {"threshold": 0.3, "rouge_reference": "answer"}})
            for p in parts]
    mixed = merge_shards([parts[0], zero[1]])
    np.testing.assert_allclose(mixed.matrix("retrieval").to_numpy(), a, atol=1e-12)
    with pytest.raises(HeadscopeError, match="no trial passed the ROUGE-1 filter"):
        merge_shards(zero)
