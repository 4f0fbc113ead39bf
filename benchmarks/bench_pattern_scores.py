"""Benchmark: all-heads pattern scorer vs TransformerLens ``detect_head``, on SmolLM2.

Baseline (not handicapped): ``transformer_lens.head_detector.detect_head`` called the way its
documentation shows, once per pattern (previous-token, duplicate-token, induction), over all
heads, on the same prompts as strings (it tokenizes them to the very same ids: checked).

headscope: ``pattern_scores`` -- one batched forward pass per 8 prompts serves all three
patterns and all heads; patterns are reduced inside their hooks.

Each side runs in its own fresh process (same machine, same run), with a warm-up, best of
``--repeats`` wall times, and peak extra RSS (above the level after model loading) sampled
every millisecond. Usage: ``python benchmarks/bench_pattern_scores.py [--prompts 16 --seq-len 48]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _measure import run_side, timed  # noqa: E402

PATTERNS = ("previous_token", "duplicate_token", "induction")
TL_NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")


def side_main(args: argparse.Namespace) -> None:
    import torch

    import headscope as hs

    torch.set_num_threads(args.threads)
    model = hs.load_model(args.model)
    task = hs.make_task("induction", n_prompts=args.prompts, seq_len=args.seq_len, seed=0)
    texts = task.texts(model)
    assert (model.to_tokens(texts) == task.tokens(model)).all(), "string and token inputs differ"
    warm = hs.make_task("induction", n_prompts=1, seq_len=8, seed=1)
    if args.side == "headscope":
        hs.score(model, warm)

        def work():
            s = hs.score(model, task, batch_size=8)
            return np.stack([s.matrix(p).to_numpy() for p in PATTERNS])
    else:
        from transformer_lens.head_detector import detect_head

        detect_head(model.bridge, warm.texts(model), "induction_head")

        def work():
            return np.stack([detect_head(model.bridge, texts, name).double().numpy() for name in TL_NAMES])

    result, seconds, first_peak, warm_peak = timed(work, args.repeats)
    print(json.dumps({"seconds": seconds, "peak_mb": first_peak, "warm_peak_mb": warm_peak,
                      "scores": result.tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", choices=["headscope", "transformer_lens"])
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    passthrough = ["--model", args.model, "--prompts", str(args.prompts), "--seq-len", str(args.seq_len),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
    base = run_side(__file__, "transformer_lens", passthrough)
    ours = run_side(__file__, "headscope", passthrough)
    diff = float(np.abs(np.array(base["scores"]) - np.array(ours["scores"])).max())
    speedup = base["seconds"] / ours["seconds"]
    print(f"\npattern scores: {args.model}, {args.prompts} prompts of [BOS] + 2 x {args.seq_len} tokens, "
          f"3 patterns, all heads, {args.threads} threads, best of {args.repeats}")
    print("peak MB = resident memory above the level before the run (freed heap trimmed first); "
          "'first' = first run, 'warm' = best repeat")
    print(f"{'side':<34}{'wall s':>9}{'speed-up':>10}{'peak MB first':>15}{'peak MB warm':>14}")
    print(f"{'TransformerLens detect_head x3':<34}{base['seconds']:>9.2f}{1.0:>10.2f}"
          f"{base['peak_mb']:>15.1f}{base['warm_peak_mb']:>14.1f}")
    print(f"{'headscope pattern_scores':<34}{ours['seconds']:>9.2f}{speedup:>10.2f}"
          f"{ours['peak_mb']:>15.1f}{ours['warm_peak_mb']:>14.1f}")
    print(f"max |difference| = {diff:.2e} (target <= 1e-5)   speed-up = {speedup:.1f}x (target >= 3x)")
    ok = (speedup >= 3 and diff <= 1e-5 and ours["peak_mb"] < base["peak_mb"]
          and ours["warm_peak_mb"] < base["warm_peak_mb"])
    print("PASS" if ok else "MISS")


if __name__ == "__main__":
    main()
