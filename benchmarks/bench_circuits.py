"""Benchmark: edge attribution (EAP) vs exact edge patching, and the verification of the top edges.

1. **Verification** of the top ``--sample`` (200) edges by ``|EAP|`` (what ``verified`` checks),
   three ways side by side: (a) the naive baseline, one full model forward per edge written here
   with plain TransformerBridge hooks (:func:`naive_edge_effects`, no headscope engine code);
   (b) the engine with one edge per forward (``slices=1``); (c) the engine batched. Printed:
   (a)/(c), target >= 3x, also with the engine's ``prepare`` counted; (b)/(c), batching alone;
   and ``max |engine - naive|``. The engine saves the blocks before each receiver (runs start
   at the receiver's block), positions after END and the unembedding away from END, every block
   for logits edges (the model's tail only), the q/k/v block run per sender (shared by every
   q/k/v edge of a layer), and per-forward overhead by batching edges that start at the same
   block (``exact.start_groups``).
2. **EAP vs exact.** EAP scores every edge from one corrupted forward (sender differences),
   one clean forward + backward and one single-block forward + backward per layer; exact
   patching of every edge, one forward per edge, is the naive per-edge cost times the number of
   edges (extrapolated, said so). Target: EAP >= 1000x faster.

Also printed: the Spearman rank correlation between EAP and the exact effects on the sample.
Times are wall clock, with process CPU time beside them (on a shared machine the CPU ratio is
the steadier one). ``--naive-sample N`` runs the baseline on N evenly spaced edges of the
sample and extrapolates (said so).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_circuits.py    # SmolLM2, IOI, 16 prompts, top 200
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_circuits.py --model toy-induction \\
        --task induction_contrast --prompts 4 --sample 32        # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[Any, tuple[float, float]]:
    """``fn()`` and its (wall, process cpu) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def naive_edge_effects(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, end: torch.Tensor,
                       metric: Callable[[torch.Tensor], torch.Tensor], edges: Sequence[Any]) -> torch.Tensor:
    """The baseline: one full model forward per edge, written with plain TransformerBridge hooks.

    No headscope engine code: sender outputs come from two cached bridge runs (``input``: the
    residual entering block 0; head ``a{l}.h{h}``: ``blocks.l.attn.hook_result[..., h, :]``,
    TransformerLens's per-head ``z_h W_O^h``; MLP: ``blocks.l.hook_mlp_out``), each difference
    corrupted - clean. Each edge is then one full forward of the clean tokens with that
    difference added to exactly one receiver input: ``blocks.l.attn.hook_{q,k,v}_input``
    (``use_split_qkv_input``: a residual copy per query head / KV head, before ``ln1``, as
    ACDC's ``use_split_qkv_input``), ``blocks.l.hook_mlp_in`` (before ``ln2``) or
    ``ln_final.hook_in``; the logits come back for every position, as ``run_with_hooks``
    returns them, and the metric reads END. Valid on models without post-attention norms
    (there a head's output is not ``hook_result``).

    Args:
        model: a headscope model (only ``model.bridge`` is used).
        clean, corrupted: (n, pos) tokens.
        end: (n,) metric position per row.
        metric: END logits (n, d_vocab) -> (n,).
        edges: :class:`~headscope.circuits.graph.Edge` list.

    Returns:
        (len(edges), n) metric(patched) - metric(clean).
    """
    bridge = model.bridge
    flags = {name: bool(getattr(bridge.cfg, name, False)) for name in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")}
    end = end.to(model.device)
    rows = torch.arange(clean.shape[0], device=end.device)

    def cached(tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        store: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[[torch.Tensor, Any], None]:
            def fn(x: torch.Tensor, hook: Any) -> None:
                store[name] = x.detach().clone()

            return fn

        names = ["blocks.0.hook_resid_pre"]
        for layer in range(model.n_layers):
            names += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[(name, keep(name)) for name in names])
        return store, metric(logits[rows, end])

    def sender_delta(s: Any) -> torch.Tensor:
        if s.kind == "input":
            key = "blocks.0.hook_resid_pre"
        elif s.kind == "mlp":
            key = f"blocks.{s.layer}.hook_mlp_out"
        else:
            key = f"blocks.{s.layer}.attn.hook_result"
        d = x_acts[key] - c_acts[key]
        return d[:, :, s.unit] if s.kind == "head" else d

    def hook_of(r: Any) -> str:
        if r.kind == "head":
            return f"blocks.{r.layer}.attn.hook_{r.input}_input"
        return f"blocks.{r.layer}.hook_mlp_in" if r.kind == "mlp" else "ln_final.hook_in"

    def add(delta: torch.Tensor, unit: int | None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            if unit is None:
                x += delta
            else:
                x[:, :, unit] += delta
            return x

        return fn

    out = torch.empty(len(edges), clean.shape[0])
    try:
        bridge.set_use_attn_result(True)
        bridge.set_use_hook_mlp_in(True)
        with torch.inference_mode():
            c_acts, base = cached(clean)
            x_acts, _ = cached(corrupted)
            bridge.set_use_attn_result(False)
            for split in (False, True):  # q/k/v receivers need a residual copy per head
                bridge.set_use_split_qkv_input(split)
                for i, e in enumerate(edges):
                    if (e.receiver.kind == "head") != split:
                        continue
                    hook = add(sender_delta(e.sender), e.receiver.unit if split else None)
                    logits = bridge.run_with_hooks(clean, fwd_hooks=[(hook_of(e.receiver), hook)])
                    out[i] = (metric(logits[rows, end]) - base).float().cpu()
    finally:
        for name, value in flags.items():
            getattr(bridge, f"set_{name}")(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi", choices=["ioi", "induction_contrast"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--sample", type=int, default=200, help="edges patched exactly (the verification set)")
    ap.add_argument("--pick", default="top", choices=["top", "random"],
                    help="which edges: the top |EAP| ones (what `verified` checks) or a seeded random sample")
    ap.add_argument("--naive-sample", type=int, default=0,
                    help="run the naive baseline on only this many of the edges (evenly spaced) and extrapolate (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import headscope
    from headscope.circuits.attribution import edge_attribution
    from headscope.circuits.exact import exact_edge_effects, prepare
    from headscope.circuits.graph import EdgeGraph
    from headscope.patching.attribution import rank_correlation
    from headscope.patching.engine import engine_for
    from headscope.tasks import make_task

    model = headscope.load_model(args.model)
    params = {"n_prompts": args.prompts} if args.task == "ioi" else {"n_prompts": args.prompts, "seq_len": 8}
    batch = make_task(args.task, **params).batch(model)
    engine = engine_for(model, batch)
    graph = EdgeGraph.of(model)
    n_edges = len(graph.edges)
    print(f"model {model!r}; {args.task}: {batch.n} prompts x {batch.clean.shape[1]} tokens; {n_edges} edges; "
          f"torch threads {torch.get_num_threads()}")

    runs, t_prepare = timed(lambda: prepare(engine, batch.clean, batch.corrupted, graph))
    scores, t_attr = timed(lambda: edge_attribution(engine, runs, graph, steps=1))
    t_eap = t_prepare[0] + t_attr[0]
    print(f"EAP, all {n_edges} edges: {t_eap:.2f} s (incl. prepare {t_prepare[0]:.2f} s: both cached runs and every "
          f"sender's output difference)")

    gen = torch.Generator().manual_seed(args.seed)
    m = min(args.sample, n_edges)
    pick = (scores.abs().argsort(descending=True)[:m] if args.pick == "top" else torch.randperm(n_edges, generator=gen)[:m]).tolist()
    sample = [graph.edges[i] for i in pick]
    kinds = Counter(e.receiver.input if e.receiver.kind == "head" else e.receiver.kind for e in sample)
    print(f"verification set: the {args.pick} {m} edges; receivers {dict(sorted(kinds.items()))}")
    with torch.inference_mode():
        exact_edge_effects(engine, runs, sample[:8])  # warm-up (first-call costs), not timed
        batched, t_batched = timed(lambda: exact_edge_effects(engine, runs, sample))
        single, t_single = timed(lambda: exact_edge_effects(engine, runs, sample, slices=1))
    naive_idx = list(range(m)) if not args.naive_sample else torch.linspace(0, m - 1, min(args.naive_sample, m)).long().unique().tolist()
    naive, t_run = timed(lambda: naive_edge_effects(model, batch.clean, batch.corrupted, batch.end, batch.logit_diff,
                                                    [sample[i] for i in naive_idx]))
    t_naive = (t_run[0] * m / len(naive_idx), t_run[1] * m / len(naive_idx))
    note = "" if len(naive_idx) == m else f"   (run on {len(naive_idx)} evenly spaced edges, {t_run[0]:.2f} s, extrapolated)"

    def row(label: str, t: tuple[float, float], extra: str = "") -> None:
        print(f"  {label:<50} {t[0]:8.2f} s  (cpu {t[1]:8.2f} s){extra}")

    def ratio(a: tuple[float, float], b: tuple[float, float]) -> str:
        return f"{a[0] / b[0]:.1f}x (cpu time: {a[1] / b[1]:.1f}x)"

    print(f"verification of {m} edges, {batch.n} prompts (wall; cpu = process time, all threads):")
    row("naive, one full forward per edge (bridge hooks)", t_naive, note)
    row("engine, one edge per forward (slices=1)", t_single)
    row("engine, batched", t_batched)
    with_prep = (t_batched[0] + t_prepare[0], t_batched[1] + t_prepare[1])
    print(f"  batched engine vs naive one forward per edge: {ratio(t_naive, t_batched)}   (target >= 3x); "
          f"counting the engine's prepare too (EAP shares it): {ratio(t_naive, with_prep)}")
    print(f"  batching alone (engine one edge per forward vs batched): {ratio(t_single, t_batched)}")
    print(f"  max |engine - naive| {float((batched[naive_idx] - naive).abs().max()):.2e}; "
          f"max |batched - one per forward| {float((single - batched).abs().max()):.2e}")

    per_naive = t_naive[0] / m
    per_engine = t_batched[0] / m
    print(f"EAP vs exact patching of all {n_edges} edges, one forward per edge: ~{per_naive * n_edges:.0f} s "
          f"(naive, extrapolated from {len(naive_idx)} edges): {per_naive * n_edges / t_eap:.0f}x   (target >= 1000x); "
          f"vs the batched engine ~{per_engine * n_edges:.0f} s (extrapolated from the {args.pick} sample, whose "
          f"receivers need not be typical): {per_engine * n_edges / t_eap:.0f}x")
    exact = batched.mean(1)
    corr = rank_correlation(scores[pick], exact)
    print(f"EAP vs exact on the sample: Spearman {corr if corr is None else round(corr, 3)}, "
          f"max |EAP - exact| {float((scores[pick] - exact).abs().max()):.3g}")


if __name__ == "__main__":
    main()
