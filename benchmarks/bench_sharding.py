"""Speed-up of a sweep split over torchrun ranks (docs/scaling.md), and that it changes no number.

Runs ``headscope score`` once in one process and once under ``torchrun --nproc-per-node N`` for
each ``N`` in ``--nproc``, each rank with ``--threads-total / N`` threads on CPU (or its own GPU
with ``--device cuda``), and prints wall time (model loading included: every rank loads its own
copy), the speed-up over one process, and the largest score difference from the one-process file.

Usage (on a quiet machine)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sharding.py --nproc 2,4 --threads-total 8
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sharding.py --device cuda --nproc 2,4,8 \\
        --model Qwen/Qwen2.5-1.5B-Instruct --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, args: argparse.Namespace, out: Path) -> float:
    """Wall seconds of one ``headscope score`` (under torchrun when ``nproc`` > 1)."""
    threads = max(1, args.threads_total // nproc)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "headscope", "score", "--model", args.model, "--task", args.task, "-a", args.analyzer,
           "--device", args.device, "--dtype", args.dtype, "--out", str(out),
           *[x for o in args.option for x in ("-o", o)]]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"N={nproc} failed:\n{res.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--analyzer", default="path_patching")
    parser.add_argument("--option", "-o", action="append", default=[], help="KEY=VALUE for headscope score")
    parser.add_argument("--nproc", default="2,4")
    parser.add_argument("--threads-total", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from headscope.results import read_parquet

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "n1.parquet"
        t1 = run(1, args, base)
        ref = read_parquet(base)["score"].to_numpy(float)
        print(f"{args.model} / {args.task} / {args.analyzer} on {args.device}, {args.threads_total} threads in all")
        print(f"{'N':>3} {'seconds':>8} {'speed-up':>9} {'max |diff|':>11}")
        print(f"{1:>3} {t1:>8.1f} {1.0:>9.2f} {0.0:>11.1e}")
        for n in (int(x) for x in args.nproc.split(",")):
            out = Path(tmp) / f"n{n}.parquet"
            tn = run(n, args, out)
            diff = float(np.nanmax(np.abs(read_parquet(out)["score"].to_numpy(float) - ref)))
            print(f"{n:>3} {tn:>8.1f} {t1 / tn:>9.2f} {diff:>11.1e}")


if __name__ == "__main__":
    main()
