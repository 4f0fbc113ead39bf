"""Retrieval heads at long context: headscope versus the naive ``output_attentions=True`` approach.

For each context length (default 1K, 2K, 4K, 8K tokens) one needle trial (depth 0.5, the needle
task's pydoc haystack) is scored on SmolLM2, each side in a fresh process:

- ``headscope``: :func:`headscope.analyzers.retrieval_heads.greedy_decode` -- chunked prefill
  into the KV cache with nothing captured, then ``--new-tokens`` decoding steps whose last-query
  argmax per head is reduced inside the hook. Expected peak: model + KV cache + O(n) per layer.
- ``naive``: a raw Hugging Face copy of the model (eager attention) called with
  ``output_attentions=True`` on the whole prompt, then the same decoding steps with the KV cache
  and ``output_attentions=True``: the prompt's call returns every layer's (heads, n, n) pattern,
  ``n_layers * n_heads * n^2`` floats held at once. It runs only where that predicted size fits
  under ``--naive-limit-gb``; elsewhere the bytes it would need are printed.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` above the level after loading; on CPU the peak
resident set above it (sampled every millisecond, :mod:`benchmarks._measure`). The KV cache size
(``2 * n_layers * n_kv_heads * d_head * n`` values) is printed so growth beyond it can be read off.
Target (issue 14): 8K tokens within 24 GB, headscope's peak growing at most linearly beyond the KV cache.

The tracer checks its first two KV-cached forward passes per model against a full recompute
(:mod:`headscope.trace.decode_check`); with chunked prefill those are the second and third prefill
chunks (at most ``3 * chunk`` tokens), so that check adds a bounded transient, not one growing with n.

Usage (time it on a quiet machine)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_long_context.py                     # CPU
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_long_context.py --device cuda --naive-limit-gb 20
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_long_context.py --lengths 1024       # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 2**20


def _trial(model, length: int):  # noqa: ANN001, ANN202
    from headscope.tasks import make_task

    return make_task("needle", context_lengths=str(length), depths="0.5", chat=True).trials(model)[0]


class _CudaPeak:
    def __enter__(self):  # noqa: ANN204
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        import torch

        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / MIB


def _naive_decode(hf, tokens, steps: int) -> list[int]:  # noqa: ANN001
    """Greedy decoding with output_attentions=True everywhere (the whole prompt's patterns first)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        res = hf(input_ids=tokens, use_cache=True, output_attentions=True)
        held = sum(a.numel() * a.element_size() for a in res.attentions)  # every layer's (1, heads, n, n)
        cache = res.past_key_values
        for _ in range(steps):
            y = int(res.logits[0, -1].argmax())
            out.append(y)
            top = [a[0, :, -1].argmax(-1) for a in res.attentions]  # what a retrieval score reads
            del res, top
            res = hf(input_ids=torch.tensor([[y]], device=tokens.device), past_key_values=cache, use_cache=True,
                     output_attentions=True)
            cache = res.past_key_values
    return [held, *out]


def side(which: str, spec: str, length: int, device: str, steps: int, chunk: int) -> dict:
    """One measurement in this process (called through ``--side``)."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from _measure import PeakRSS

    from headscope import load_model

    model = load_model(spec, device=device)
    trial = _trial(model, length)
    n = int(trial.tokens.shape[1])
    hf = None
    if which == "naive":
        import gc

        from headscope.verify.raw_model import load_raw_hf

        hf = load_raw_hf(model)
        del model  # only the raw copy stays resident
        gc.collect()
    meter = _CudaPeak() if device.startswith("cuda") else PeakRSS()
    with meter:
        t0 = time.perf_counter()
        if which == "headscope":
            from headscope.analyzers.retrieval_heads import greedy_decode

            text, _ = greedy_decode(model, trial, steps, sentence_end=False, prefill_chunk=chunk)
            held = 0
        else:
            held, *_ = _naive_decode(hf, trial.tokens.to(device), steps)
        seconds = time.perf_counter() - t0
    return {"side": which, "tokens": n, "seconds": seconds, "peak_mb": meter.extra_mb, "held_mb": held / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1024,2048,4096,8192",
                        help="context lengths in tokens (capped at the model's context minus the prompt wrapper)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=8, help="decoding steps per trial")
    parser.add_argument("--chunk", type=int, default=1024, help="headscope's prefill_chunk")
    parser.add_argument("--naive-limit-gb", type=float, default=8.0,
                        help="run the naive side only where its predicted pattern bytes fit under this")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.model, args.length, args.device, args.new_tokens, args.chunk)))
        return
    from _measure import run_side

    from headscope import load_model

    model = load_model(args.model)
    n_layers, n_heads, n_kv, d_head, n_ctx = model.n_layers, model.n_heads, model.n_kv_heads, model.d_head, model.n_ctx
    item = 4 if str(model.dtype).endswith("float32") else 2
    del model
    common = ["--model", args.model, "--device", args.device, "--new-tokens", str(args.new_tokens),
              "--chunk", str(args.chunk)]
    print(f"{args.model}: {n_layers} layers x {n_heads} heads ({n_kv} KV), d_head {d_head}, context {n_ctx}; "
          f"device {args.device}; {args.new_tokens} decoding steps; prefill chunk {args.chunk}")
    print(f"{'context':>8} {'tokens':>7} {'side':>10} {'seconds':>8} {'peak MB':>9} {'KV MB':>7} "
          f"{'peak-KV MB':>10} {'patterns MB':>12}")
    for length in (int(x) for x in args.lengths.split(",")):
        context = min(length, n_ctx - 128)  # room for the wrapper, the question and the answer
        r = run_side(__file__, "headscope", [*common, "--length", str(context)])
        kv_mb = 2 * n_layers * n_kv * d_head * (r["tokens"] + args.new_tokens) * item / MIB
        print(f"{length:>8} {r['tokens']:>7} {'headscope':>10} {r['seconds']:>8.2f} {r['peak_mb']:>9.0f} "
              f"{kv_mb:>7.0f} {r['peak_mb'] - kv_mb:>10.0f} {'-':>12}")
        pattern_bytes = n_layers * n_heads * r["tokens"] ** 2 * item
        if pattern_bytes / 2**30 <= args.naive_limit_gb:
            q = run_side(__file__, "naive", [*common, "--length", str(context)])
            print(f"{length:>8} {q['tokens']:>7} {'naive':>10} {q['seconds']:>8.2f} {q['peak_mb']:>9.0f} "
                  f"{kv_mb:>7.0f} {q['peak_mb'] - kv_mb:>10.0f} {q['held_mb']:>12.0f}")
        else:
            print(f"{length:>8} {r['tokens']:>7} {'naive':>10} {'not run':>8}: would need {pattern_bytes:,} bytes "
                  f"({pattern_bytes / 2**30:.1f} GiB) for the prompt's attention patterns alone "
                  f"(> --naive-limit-gb {args.naive_limit_gb})")


if __name__ == "__main__":
    main()
