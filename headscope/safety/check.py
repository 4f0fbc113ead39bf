"""Behavioural check of safety heads (Zhou et al. 2024, Sec. 4): refusal rates when the chosen
heads are ablated versus random heads.

For the harmful requests of a ``safety`` task, greedy answers are generated (chat template
applied) under: no ablation (``base``), the chosen heads ablated together (``safety_heads``),
and ``n_random`` seeded draws of as many random heads (``random_1``, ...; never including a
chosen head). Each condition's refusal rate comes from a pluggable detector
(:mod:`headscope.safety.refusal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.generation import greedy_generate
from headscope.safety.ablation import PAPER_EPS, build_ablation, masked_mean_z
from headscope.safety.refusal import Detector, load_detector

Head = tuple[int, int]


def random_heads(model: Any, k: int, exclude: Sequence[Head], seed: int) -> list[Head]:
    """``k`` distinct random heads not in ``exclude`` (seeded)."""
    pool = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads) if (layer, h) not in set(exclude)]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k]
    return sorted(pool[i] for i in order.tolist())


def refusal_check(
    model: Any,
    task: Any,
    heads: Sequence[Head],
    n_random: int = 2,
    max_new_tokens: int = 24,
    ablation: str = "query_scale",
    eps: float = PAPER_EPS,
    seed: int = 0,
    detector: Detector | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    include_base: bool = True,
    split: str = "harmful",
) -> dict[str, Any]:
    """Generate under each condition and report refusal rates.

    Conditions: ``base`` (no ablation; skipped with ``include_base=False``), ``safety_heads``
    (``heads`` ablated together) and ``random_i`` (as many random other heads, seed ``seed + i``).
    ``split="harmless"`` generates for the harmless requests instead: the same conditions then
    measure over-refusal (an ablation that makes the model refuse everything is not a
    safety-specific effect).

    Returns:
        ``{"conditions": {name: {"heads": [...], "refusal_rate": float, "responses": [...]}},
        "choices": {...}}``.
    """
    det = load_detector(detector)
    rows = task.token_rows(model, split)
    heads = [(int(a), int(b)) for a, b in heads]
    conds: dict[str, list[Head]] = {"base": []} if include_base else {}
    conds["safety_heads"] = heads
    for i in range(n_random):
        conds[f"random_{i + 1}"] = random_heads(model, len(heads), heads, seed + i)
    means = None
    if ablation == "mean_z":
        tok, last = task.padded(model, "harmless")
        means = masked_mean_z(model, tok, last, [layer for hs in conds.values() for layer, _ in hs])
    out: dict[str, Any] = {}
    for name, hs in conds.items():
        ivs = build_ablation(ablation, hs, eps, means) if hs else []
        ids = greedy_generate(model, rows, max_new_tokens, ivs, batch_size, progress)
        texts = [model.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
        out[name] = {"heads": [f"{a}.{b}" for a, b in hs], "refusal_rate": sum(bool(det(t)) for t in texts) / max(1, len(texts)), "responses": texts}
    return {"conditions": out, "choices": {"ablation": ablation, "eps": eps, "max_new_tokens": max_new_tokens,
            "decoding": "greedy, chat template", "detector": getattr(det, "__name__", type(det).__name__), "seed": seed,
            "n_prompts": len(rows), "split": split}}
