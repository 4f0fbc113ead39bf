"""Peak memory of one retrieval-scoring step versus a naive full-pattern cache.

Each measurement runs in a fresh subprocess and reports the growth of peak RSS (``ru_maxrss``)
over the RSS right after loading the model, for one forward pass on a ``--length``-token prompt:

- ``reducer``: what ``retrieval_heads`` does per decoding step -- ``trace`` with the
  ``last_query_argmax`` reducer and ``keep_logits=True`` (no pattern kept);
- ``naive``: ``trace(..., acts=("pattern",))`` over all layers, i.e. caching every full
  attention pattern (n_layers * n_heads * L^2 floats). It is only run when that cache is
  predicted to fit under ``--naive-limit-gb``; otherwise its predicted size is printed.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval_memory.py --lengths 1024,2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _child(model_spec: str, length: int, mode: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from headscope import load_model
    from headscope.tasks.needle import haystack_text
    from headscope.trace import last_query_argmax, trace

    model = load_model(model_spec)
    ids = model.tokenizer.encode(haystack_text(), add_special_tokens=False)[:length]
    tokens = torch.tensor([ids])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "reducer":
        tr = trace(model, tokens, reducers=[last_query_argmax("top1")], keep_logits=True)
        kept = tr.reduced("top1").numel() * 8
    else:
        tr = trace(model, tokens, acts=("pattern",))
        kept = sum(t.numel() * t.element_size() for t in tr.acts.values())
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "length": length, "peak_growth_mb": (peak - base) / 1024,
                      "kept_mb": kept / 2**20, "seconds": seconds}))


def _run(model: str, length: int, mode: str, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", mode, "--model", model, "--lengths", str(length),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive-limit-gb", type=float, default=6.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.child:
        _child(args.model, lengths[0], args.child, args.threads)
        return
    from headscope import load_model

    model = load_model(args.model)
    n_layers, n_heads = model.n_layers, model.n_heads
    del model
    print(f"{'length':>7} {'mode':>8} {'peak RSS growth MB':>19} {'kept MB':>10} {'seconds':>8}")
    for length in lengths:
        r = _run(args.model, length, "reducer", args.threads)
        print(f"{length:>7} {'reducer':>8} {r['peak_growth_mb']:>19.0f} {r['kept_mb']:>10.4f} {r['seconds']:>8.1f}")
        predicted_gb = n_layers * n_heads * length**2 * 4 / 2**30
        if predicted_gb <= args.naive_limit_gb:
            r = _run(args.model, length, "naive", args.threads)
            print(f"{length:>7} {'naive':>8} {r['peak_growth_mb']:>19.0f} {r['kept_mb']:>10.1f} {r['seconds']:>8.1f}")
        else:
            print(f"{length:>7} {'naive':>8} {'not run':>19} {predicted_gb * 1024:>10.0f} "
                  f"(predicted full-pattern cache > --naive-limit-gb {args.naive_limit_gb})")


if __name__ == "__main__":
    main()
