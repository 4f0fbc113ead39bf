"""Study: the IOI edge circuit of a real model (issue 13, "Real model").

Measures, on one set of IOI prompts, with headscope's circuit API only (no new algorithms):

1. **Attribution vs exact.** EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024, ``--steps``
   points, headscope's default ``clean_end`` grid, input interpolation) for all edges; the top
   ``--top`` edges by ``|EAP-IG|`` patched exactly (:func:`headscope.circuits.exact.exact_edge_effects`,
   the code ``verified`` uses); Spearman rank correlation, sign agreement, top-half overlap and
   max error of each estimate against the exact effects (:func:`headscope.circuits.prune.agreement`).
2. **Faithfulness** (:func:`headscope.circuits.prune.faithfulness_curve`) of the top-k edges by
   ``|EAP-IG|`` (every other edge patched to its corrupted value) for k in ``--sizes``, against
   ``--n-random`` random k-edge sets (seeded).
3. **Heads.** The attention heads the top-``--top`` circuit touches (as a sender, or through
   their query / KV group), compared with the top heads of head-level activation patching
   (analyzer ``activation_patching``, ``act=z``, all positions: denoising, so a different
   direction from the edges' noising scores).

Writes to ``--out``: ``edges.parquet`` (EdgeScores: score = EAP-IG, ``circuit`` = the top
``--top`` edges, extra columns ``eap`` and ``exact`` (NaN outside the verified edges)),
``heads.parquet`` (the activation-patching HeadScores) and ``summary.json``.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_ioi_circuit.py \\
        --prompts 16 --out /tmp/ioi_circuit
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def heads_of_edge(edge: Any) -> set[tuple[int, int]]:
    """(layer, query head) pairs an edge touches: a head sender, a query receiver, a KV group's query heads."""
    out: set[tuple[int, int]] = set()
    if edge.sender.kind == "head":
        out.add((edge.sender.layer, edge.sender.unit))
    r = edge.receiver
    if r.kind == "head":
        if r.input == "q":
            out.add((r.layer, r.unit))
        else:
            out.update((r.layer, h) for h in r.kv_group)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--top", type=int, default=200, help="edges verified exactly (top |EAP-IG|)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200], help="circuit sizes for faithfulness")
    ap.add_argument("--n-random", type=int, default=3, help="random edge sets per size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random edge sets")
    ap.add_argument("--top-heads", type=int, default=10, help="activation-patching heads to compare")
    ap.add_argument("--skip-heads", action="store_true", help="skip head-level activation patching")
    ap.add_argument("--prune", type=int, nargs="*", default=[],
                    help="candidate counts N: ACDC-style greedy pruning (the `verified` method's) of the top-N edges")
    ap.add_argument("--threshold", type=float, default=None,
                    help="pruning threshold on the prompt-mean logit diff (default 1%% of |clean - corrupted|)")
    ap.add_argument("--threshold-rule", choices=["signed", "abs"], default="signed",
                    help="pruning rule (the `verified` method's threshold_rule): signed = ACDC's default, abs = "
                         "|change| < threshold (the rule before issue 22)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import headscope
    from headscope.analyzers.registry import run_analyzer
    from headscope.circuits.attribution import edge_attribution
    from headscope.circuits.exact import exact_edge_effects
    from headscope.circuits.methods import circuit_mask, result, setup
    from headscope.circuits.prune import agreement, faithfulness, faithfulness_curve, greedy_prune
    from headscope.tasks import make_task

    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    model = headscope.load_model(args.model)
    task = make_task("ioi", n_prompts=args.prompts)

    t0 = time.perf_counter()
    batch, engine, graph, runs = setup(model, task, "logit_diff")
    n_edges = len(graph.edges)
    clean, corrupted = float(runs.clean_metric.mean()), float(runs.corrupted_metric.mean())
    print(f"model {args.model}; ioi: {batch.n} prompts x {batch.clean.shape[1]} tokens; {n_edges} edges; "
          f"logit diff clean {clean:.3f}, corrupted {corrupted:.3f}; torch threads {torch.get_num_threads()}", flush=True)
    eap = edge_attribution(engine, runs, graph, steps=1)
    times["setup_and_eap_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ig = edge_attribution(engine, runs, graph, steps=args.steps)
    times["eap_ig_s"] = time.perf_counter() - t0
    print(f"EAP {times['setup_and_eap_s']:.0f} s (incl. cached runs), EAP-IG ({args.steps} steps) {times['eap_ig_s']:.0f} s", flush=True)

    # 1. attribution vs exact on the top edges by |EAP-IG|
    k = min(args.top, n_edges)
    top = ig.abs().argsort(descending=True, stable=True)[:k]
    t0 = time.perf_counter()
    with torch.inference_mode():
        exact = exact_edge_effects(engine, runs, [graph.edges[i] for i in top.tolist()]).mean(1)
    times["exact_s"] = time.perf_counter() - t0
    agree = {"eap": agreement(eap[top], exact), "eap_ig": agreement(ig[top], exact)}
    print(f"\nexact patching of the top {k} edges by |EAP-IG|: {times['exact_s']:.0f} s")
    print(f"{'estimate':<10}{'spearman':>10}{'sign agr.':>11}{'top-half':>10}{'max err':>10}")
    for name, a in agree.items():
        rho = a["rank_correlation"]
        print(f"{name:<10}{(rho if rho is not None else float('nan')):>10.3f}{a['sign_agreement']:>11.3f}"
              f"{a['top_half_overlap']:>10.3f}{a['max_abs_error']:>10.3f}")

    # 2. faithfulness of the top-k EAP-IG edges vs random k-edge sets
    t0 = time.perf_counter()
    curve = faithfulness_curve(engine, runs, graph, ig, sorted(args.sizes), n_random=args.n_random, seed=args.seed)
    times["faithfulness_s"] = time.perf_counter() - t0
    print(f"\nfaithfulness (every other edge patched to corrupted; {args.n_random} random sets per size): "
          f"{times['faithfulness_s']:.0f} s")
    print(f"{'edges':>6}{'top EAP-IG':>12}{'random mean':>13}{'random std':>12}")
    for row in curve:
        print(f"{row['edges']:>6}{row['faithfulness']:>12.3f}{row['random_mean']:>13.3f}{row['random_std']:>12.3f}")

    # 2b. verified circuits: greedy pruning of the top-N candidates, as the `verified` method does
    pruned_rows = []
    thr = 0.01 * abs(clean - corrupted) if args.threshold is None else args.threshold
    for n_cand in sorted(args.prune):
        t0 = time.perf_counter()
        cand = torch.zeros(n_edges, dtype=torch.bool)
        cand[ig.abs().argsort(descending=True, stable=True)[:n_cand]] = True
        def tick(done: int, total: int, kept: int, t0: float = t0, n_cand: int = n_cand) -> None:
            if done % 10 == 0 or done == total:
                print(f"  pruning top-{n_cand} ({args.threshold_rule}): {done}/{total} removals tried, {kept} edges kept, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)

        kept, tried = greedy_prune(engine, runs, graph, cand, thr, progress=tick, threshold_rule=args.threshold_rule)
        n_kept = int(kept.sum())
        gen = torch.Generator().manual_seed(args.seed)
        rand = []
        for _ in range(args.n_random):
            r = torch.zeros(n_edges, dtype=torch.bool)
            r[torch.randperm(n_edges, generator=gen)[:n_kept]] = True
            rand.append(faithfulness(engine, runs, graph, r))
        row = {"candidates": n_cand, "kept": n_kept, "removals_tried": tried, "threshold": thr,
               "threshold_rule": args.threshold_rule,
               "candidates_faithfulness": faithfulness(engine, runs, graph, cand),
               "pruned_faithfulness": faithfulness(engine, runs, graph, kept),
               "random_mean": float(torch.tensor(rand).mean()) if rand else float("nan"),
               "kept_edges": [graph.edges[i].key for i in kept.nonzero().flatten().tolist()],
               "seconds": time.perf_counter() - t0}
        pruned_rows.append(row)
        print(f"pruned top-{n_cand}: kept {n_kept} edges, faithfulness {row['pruned_faithfulness']:.3f} "
              f"(candidates {row['candidates_faithfulness']:.3f}, random {n_kept}-edge sets {row['random_mean']:.3f}); "
              f"{row['seconds']:.0f} s", flush=True)

    # 3. heads in the circuit vs head-level activation patching
    touched: dict[tuple[int, int], float] = {}
    for i in top.tolist():
        for h in heads_of_edge(graph.edges[i]):
            touched[h] = touched.get(h, 0.0) + float(ig[i].abs())
    senders: dict[tuple[int, int], float] = {}
    for i in top.tolist():
        s = graph.edges[i].sender
        if s.kind == "head":
            senders[(s.layer, s.unit)] = senders.get((s.layer, s.unit), 0.0) + float(ig[i].abs())
    circuit_heads = sorted(touched, key=lambda h: -touched[h])
    heads_info: dict[str, Any] = {
        "circuit_heads": [f"L{a}H{h}" for a, h in circuit_heads],
        "circuit_head_weight": {f"L{a}H{h}": touched[(a, h)] for a, h in circuit_heads},
        "circuit_sender_heads": [f"L{a}H{h}" for a, h in sorted(senders, key=lambda h: -senders[h])],
    }
    if not args.skip_heads:
        t0 = time.perf_counter()
        hs = run_analyzer("activation_patching", model, task, act="z")
        times["activation_patching_s"] = time.perf_counter() - t0
        hs.to_parquet(args.out / "heads.parquet")
        ap_top = hs.top(args.top_heads, absolute=True)
        ap_heads = [(int(r.layer), int(r.head)) for r in ap_top.itertuples()]
        ap_scores = {f"L{r.layer}H{r.head}": float(r.score) for r in ap_top.itertuples()}
        heads_info.update({
            "activation_patching_top": ap_scores,
            "top_in_circuit": [f"L{a}H{h}" for a, h in ap_heads if (a, h) in touched],
            "top_as_circuit_sender": [f"L{a}H{h}" for a, h in ap_heads if (a, h) in senders],
        })
    print(f"\nheads touched by the top {k} edges: {len(circuit_heads)} (as senders: {len(senders)})")
    print("  by summed |EAP-IG| of their edges:", ", ".join(heads_info["circuit_heads"][:15]))
    if "activation_patching_top" in heads_info:
        print(f"activation patching (z, denoising) top {args.top_heads} heads by |score|, * = in the circuit:")
        print("  " + ", ".join(f"{h} {v:+.3f}{'*' if h in heads_info['top_in_circuit'] else ''}"
                               for h, v in heads_info["activation_patching_top"].items()))
        print(f"  {len(heads_info['top_in_circuit'])}/{args.top_heads} in the circuit, "
              f"{len(heads_info['top_as_circuit_sender'])}/{args.top_heads} as senders")

    exact_col = torch.full((n_edges,), float("nan"))
    exact_col[top] = exact
    mask = circuit_mask(ig, top_edges=k)
    choices = {"verification": agree, "faithfulness_curve": curve, "pruned": pruned_rows, "heads": heads_info,
               "ranking": f"EAP-IG, {args.steps} steps, input interpolation, grid clean_end"}
    edges = result(model, task, "eap_ig", graph, runs, ig, mask,
                   {"steps": args.steps, "top_edges": k, "n_random": args.n_random, "seed": args.seed},
                   choices, extra={"eap": eap.tolist(), "exact": exact_col.tolist()})
    edges.to_parquet(args.out / "edges.parquet")
    times["total_s"] = time.perf_counter() - t_all
    summary = {"model": args.model, "task": "ioi", "prompts": batch.n, "tokens": int(batch.clean.shape[1]),
               "n_edges": n_edges, "clean_logit_diff": clean, "corrupted_logit_diff": corrupted,
               "steps": args.steps, "top": k, **choices, "times": times,
               "top_edges": [{"edge": graph.edges[i].key, "eap_ig": float(ig[i]), "eap": float(eap[i]),
                              "exact": float(exact[j])} for j, i in enumerate(top.tolist()[:30])]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nwrote {args.out}/edges.parquet, summary.json{', heads.parquet' if not args.skip_heads else ''}; "
          f"total {times['total_s']:.0f} s")


if __name__ == "__main__":
    main()
