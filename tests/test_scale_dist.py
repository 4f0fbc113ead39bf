"""torch.distributed sweeps on CPU (gloo, 2 ranks): torchrun == one process (head scores and
exact edge scores); a failed rank is named.

The reference is the one-process run (the property under test is that distributing changes
nothing); activation patching itself is checked against hand-written hooks in test_scale.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

import headscope
from headscope.analyzers import run_analyzer
from headscope.results import read_parquet
from headscope.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HEADSCOPE_PROGRESS="0", PYTHONPATH=str(ROOT))
    return env


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path):
    out = tmp_path / "ap.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headscope",
           "score", "--model", "toy-induction", "--task", "induction_contrast", "-a", "activation_patching",
           "-o", "n_prompts=6", "-o", "seed=1", "-o", "positions=named", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ap.parquet"]  # rank 0 wrote one file, no parts
    merged = read_parquet(out)
    full = run_analyzer("activation_patching", headscope.load_model("toy-induction"),
                        make_task("induction_contrast", n_prompts=6, seed=1), positions="named")
    assert merged[["metric", "layer", "head"]].values.tolist() == full[["metric", "layer", "head"]].values.tolist()
    for col in ("score", "stderr", "raw_metric"):
        np.testing.assert_allclose(merged[col].to_numpy(float), full[col].to_numpy(float), rtol=0, atol=1e-6)
    assert merged.provenance["world_size"] == 2
    assert merged.provenance["sharding"]["mode"] == "torch.distributed"
    assert merged.provenance["options"] == full.provenance["options"]


def test_torchrun_exact_edges_two_gloo_ranks_equal_one_process(tmp_path):
    """``headscope circuit --method exact`` under torchrun: the ranks' receiver blocks gathered on
    rank 0 into one EdgeScores file (its numbers are checked against raw HF in test_scale_edges.py)."""
    from headscope.circuits.methods import run_circuit_method
    from headscope.results.edge_scores import read_edge_scores

    out = tmp_path / "edges.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headscope",
           "circuit", "--model", "zoo-llama", "--task", "induction_contrast", "--method", "exact",
           "-o", "n_prompts=4", "-o", "seed=1", "-o", "top_edges=8", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edges.parquet"]  # rank 0 wrote one file, no parts
    merged = read_edge_scores(out)
    full = run_circuit_method("exact", headscope.load_model("zoo-llama"), make_task("induction_contrast", n_prompts=4, seed=1),
                              top_edges=8)
    ids = ["sender", "receiver", "receiver_input"]
    assert merged[ids].values.tolist() == full[ids].values.tolist()
    np.testing.assert_allclose(merged["score"].to_numpy(float), full["score"].to_numpy(float), rtol=0, atol=1e-6)
    assert merged["circuit"].tolist() == full["circuit"].tolist() and int(merged["circuit"].sum()) == 8
    assert merged.provenance["world_size"] == 2
    assert merged.provenance["sharding"] == {"mode": "torch.distributed", "parts": 2, "unit": "receiver block", "n_units": 4}
    assert merged.provenance["options"] == full.provenance["options"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 2-rank group whose rank 1 fails; writes what each rank raised."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    from headscope.cli.sharding import plan_shards
    from headscope.errors import HeadscopeError
    from headscope.models import load_model
    from headscope.plan import plan, run

    shards = plan_shards(None)
    shards.device("cpu")
    call = plan("activation_patching", "induction_contrast", {"n_prompts": 2, "seq_len": 6, "layers": [0, 1]})

    def load():  # noqa: ANN202 - the backend loads inside its error handling
        if rank == 1:
            raise HeadscopeError("unknown model 'nope'")
        return load_model("toy-induction")

    try:
        run(call, load, shards.backend)
        message = "no error"
    except HeadscopeError as exc:
        message = str(exc)
    Path(out_dir, f"{rank}.txt").write_text(message)


def test_a_failing_rank_is_named_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"{rank}.txt").read_text() == "shard 1/2 (rank 1) failed: unknown model 'nope'"


def test_launcher_env_checks(monkeypatch):
    from headscope.errors import HeadscopeError
    from headscope.scale.dist import from_env

    assert from_env({}) is None
    assert from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).world_size == 4
    with pytest.raises(HeadscopeError, match="RANK=4 does not lie"):
        from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_device_map_with_several_ranks_per_node_needs_visible_devices(monkeypatch):
    """docs/scaling.md: every rank would spread its model over all GPUs; refused unless
    CUDA_VISIBLE_DEVICES gives each rank its own, or there is one rank per node."""
    from headscope.cli.sharding import plan_shards
    from headscope.errors import HeadscopeError

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(HeadscopeError, match="--device-map with 2 ranks per node"):
        plan_shards(None, device_map="auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert plan_shards(None, device_map="auto").shard.index == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert plan_shards(None, device_map="auto").shard.count == 4
