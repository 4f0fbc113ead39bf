"""Study: what the component-level ``routes`` default (``aggregate=trace``) adds over EAP-IG's
information-flow-route scores (``aggregate=reference``), issue 22.

For each model, on ``InductionContrastTask(n_prompts=16, seq_len=8, seed)``: Spearman rank
correlation of each aggregate's scores with ``|exact|`` edge patching over all edges, over the
value/MLP/logit edges alone and over the q/k edges alone (``trace`` gives q/k 0, so that one is
undefined), the number of circuit edges, the overlap of each top-4 with exact's top-4, and on
toy-induction the rank and circuit flag of the planted route (the four edges exact patching
scores ~9.8). Prints one line per (model, aggregate).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_routes_aggregate.py \\
        --models toy-induction zoo-llama zoo-gpt2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import torch

import headscope as hs
from headscope.circuits.methods import run_circuit_method
from headscope.tasks.induction_contrast import InductionContrastTask
from headscope.toy.zoo import build_zoo_model

PLANTED = [("input", "a0.h0", "v"), ("a0.h0", "a1.h0", "k"), ("input", "a1.h0", "v"), ("a1.h0", "logits", "in")]
"""toy-induction's route: previous-token head value, its K-composition into the induction head,
the induction head's value and its write into the logits."""


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def top(scores: pd.Series, k: int = 4) -> set[int]:
    return set((-torch.tensor(scores.to_numpy())).argsort(stable=True)[:k].tolist())


def study(model: object, name: str, seed: int) -> None:
    task = InductionContrastTask(n_prompts=16, seq_len=8, seed=seed)
    exact = run_circuit_method("exact", model, task)
    key = list(zip(exact["sender"], exact["receiver"], exact["receiver_input"], strict=True))
    ex = exact["score"].abs().reset_index(drop=True)
    for agg in ("trace", "reference"):
        got = run_circuit_method("routes", model, task, aggregate=agg)
        assert list(zip(got["sender"], got["receiver"], got["receiver_input"], strict=True)) == key
        s = got["score"].reset_index(drop=True)
        qk = got["receiver_input"].isin(["q", "k"]).to_numpy()
        print(f"{name} seed {seed} {agg}: spearman vs |exact| {spearman(s, ex):.3f} ({len(s)} edges); "
              f"v/MLP/logits {spearman(s[~qk], ex[~qk]):.3f}; q/k {spearman(s[qk], ex[qk]):.3f}; "
              f"circuit {int(got['circuit'].sum())}; top-4 overlap {len(top(s) & top(ex))}")
        if name == "toy-induction":
            order = (-torch.tensor(s.to_numpy())).argsort(stable=True).tolist()
            rank = {key[i]: n + 1 for n, i in enumerate(order)}
            flags = dict(zip(key, got["circuit"], strict=True))
            print("   planted:", ", ".join(f"{a}->{b}<{c}> rank {rank[(a, b, c)]} score {s[key.index((a, b, c))]:.3f}"
                                           f"{' kept' if flags[(a, b, c)] else ''}" for a, b, c in PLANTED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy-induction", "zoo-llama", "zoo-gpt2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = str(build_zoo_model(name[4:], f"{tmp}/{name}", seed=0)) if name.startswith("zoo-") else name
            model = hs.load_model(spec)
            for seed in args.seeds:
                study(model, name, seed)


if __name__ == "__main__":
    main()
