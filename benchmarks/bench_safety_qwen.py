"""Safety heads on Qwen2.5-Coder-0.5B-Instruct (a model that refuses): Ships, Sahara, refusal rates.

Zhou et al. 2024 ("On the Role of Attention Heads in Large Language Model Safety"):

1. Ships (query scaling, eps) for the heads of ``--layers`` (default all 24 x 14) on
   ``--n-ships`` built-in harmful requests (chat template applied);
2. Sahara: greedy set of ``--steps`` heads among the ``--candidates`` top Ships heads;
3. behavioural check: greedy answers (``--max-new`` tokens, KV-cached) to ``--n-gen`` harmful
   requests with no ablation, the Sahara heads ablated, the top-K Ships heads ablated for each
   K in ``--top-ships``, and for every set ``--n-random`` random head sets of the same size
   (``--ablation``, default query scaling). Refusal rates come from the phrase detector
   (:mod:`headscope.safety.refusal`). The same conditions are run on the harmless requests
   (skip with ``--no-harmless-check``): their refusal rate is the detector's false-positive
   check without ablation, and the over-refusal an ablation causes with it. ``--reuse`` reuses
   the Ships/Sahara files already in ``--out``.

Needs the Qwen parts (``make setup-qwen``); skips with a message otherwise. Not run in CI.
Writes ``results/qwen_safety_ships.parquet``, ``..._sahara.parquet``, heatmaps (.html) and
``results/qwen_safety_summary.json``. Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_safety_qwen.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n-ships", type=int, default=24, help="harmful requests for Ships/Sahara")
    ap.add_argument("--n-gen", type=int, default=32, help="harmful requests for the refusal check")
    ap.add_argument("--layers", default=None, help="Ships only on these layers, e.g. 0-11")
    ap.add_argument("--eps", type=float, default=None,
                    help="query scale for Ships, Sahara and the refusal check (default: each analyzer's paper preset)")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--n-random", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-ships", default="10,30,60", help="also check ablating the top-K Ships heads, for each K listed ('' skips)")
    ap.add_argument("--no-harmless-check", action="store_true", help="skip generating for the harmless requests under every condition")
    ap.add_argument("--ablation", default="query_scale", help="ablation for the refusal check: query_scale, mean_mask, mean_z or zero")
    ap.add_argument("--reuse", action="store_true", help="reuse Ships/Sahara parquet files in --out instead of recomputing")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    from headscope.models.aliases import ALIASES

    alias = ALIASES.get(args.model)
    if alias is not None and not alias.available():
        print(f"skipped: {args.model} is not installed ({alias.install_hint})")
        return
    import torch

    import headscope
    from headscope.analyzers import run_analyzer
    from headscope.plots import head_heatmap, save_html
    from headscope.safety.check import refusal_check
    from headscope.tasks import make_task

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = headscope.load_model(args.model)
    timings["load_s"] = time.perf_counter() - t0
    print(model, f"loaded in {timings['load_s']:.0f} s", flush=True)

    from headscope.results import read_parquet

    task = make_task("safety", n_prompts=args.n_ships, seed=args.seed)
    t = time.perf_counter()
    if args.reuse:
        ships = read_parquet(out / "qwen_safety_ships.parquet")
    else:
        eps = {} if args.eps is None else {"eps": args.eps}
        ships = run_analyzer("ships", model, task, preset="paper", layers=args.layers, batch_size=args.n_ships,
                             progress=True, **eps)
        ships.to_parquet(out / "qwen_safety_ships.parquet")
    timings["ships_s"] = time.perf_counter() - t
    save_html(head_heatmap(ships, "ships_kl"), out / "qwen_safety_ships.html")
    top = ships.top(10, "ships_kl")
    print("Ships top 10:\n", top[["label", "score", "stderr"]].to_string(index=False), flush=True)
    print("base first tokens:", ships.provenance["choices"]["base_top_tokens"], flush=True)

    t = time.perf_counter()
    cand = ",".join(top["label"].head(args.candidates))
    if args.reuse:
        sah = read_parquet(out / "qwen_safety_sahara.parquet")
    else:
        sah = run_analyzer("sahara", model, task, steps=args.steps, candidates=cand, batch_size=args.n_ships,
                           progress=True, **({} if args.eps is None else {"eps": args.eps}))
        sah.to_parquet(out / "qwen_safety_sahara.parquet")
    timings["sahara_s"] = time.perf_counter() - t
    selected = sah.provenance["choices"]["selected"]
    print("Sahara set:", selected, "angles:", sah.provenance["choices"]["set_angle_per_step"], flush=True)

    t = time.perf_counter()
    gen_task = make_task("safety", n_prompts=args.n_gen, seed=args.seed + 1)
    heads = model.parse_heads(",".join(selected))
    splits = ["harmful"] if args.no_harmless_check else ["harmful", "harmless"]
    check: dict = {"conditions": {}}
    for split in splits:
        sets = [("", heads, args.seed)] + [(f"top{k}_ships_", ships.heads("ships_kl", k=k), args.seed + 100 + k)
                                           for k in [int(x) for x in str(args.top_ships).split(",") if x.strip()]]
        for prefix, hs, seed in sets:
            got = refusal_check(model, gen_task, hs, n_random=args.n_random, max_new_tokens=args.max_new,
                                ablation=args.ablation, seed=seed, batch_size=args.n_gen,
                                **({} if args.eps is None else {"eps": args.eps}),
                                progress=True, include_base=not prefix, split=split)
            check["choices"] = got["choices"]
            for name, cond in got["conditions"].items():
                check["conditions"][f"{prefix}{name}" + ("" if split == "harmful" else "@harmless")] = cond
    timings["generation_s"] = time.perf_counter() - t
    rates = {k: v["refusal_rate"] for k, v in check["conditions"].items()}
    print("refusal rates:", json.dumps(rates), flush=True)
    print(f"\n{'condition':28s} {'heads':>5s} {'harmful':>8s} {'harmless':>8s}")
    for name, cond in check["conditions"].items():
        if not name.endswith("@harmless"):
            other = rates.get(f"{name}@harmless", float("nan"))
            print(f"{name:28s} {len(cond['heads']):5d} {cond['refusal_rate']:8.3f} {other:8.3f}")
    for name, cond in check["conditions"].items():
        print(f"--- {name} {cond['heads']}: {cond['responses'][0]!r} | {cond['responses'][1]!r}")
    summary = {
        "model": model.spec, "args": vars(args), "timings": timings,
        "ships_top10": [{"head": r.label, "kl": r.score, "stderr": r.stderr} for r in top.itertuples()],
        "base_first_tokens": ships.provenance["choices"]["base_top_tokens"],
        "sahara": {"selected": selected, "set_angle_per_step": sah.provenance["choices"]["set_angle_per_step"]},
        "refusal_rates": rates, "conditions": check["conditions"],
        "choices": check["choices"],
    }
    (out / "qwen_safety_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}/qwen_safety_*.parquet/.html/summary.json; timings {timings}")


if __name__ == "__main__":
    sys.exit(main())
