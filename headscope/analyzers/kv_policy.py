"""Export a KV-cache retention policy from head scores (RazorAttention-style, Tang et al. 2024).

Given HeadScores and, per metric, a fraction ``f``, the policy keeps a full KV cache for the
top ``ceil(f * n_heads_total)`` query heads of that metric (the union over metrics). Because a
KV cache is stored per KV head, the policy also lists the (layer, kv_head) pairs that serve a
kept query head: under GQA keeping one query head means keeping its whole group's cache.

Default fractions: ``echo`` 0.01 and ``induction`` 0.15 when those metrics are present (our
defaults, in the range RazorAttention reports protecting; change them with ``fractions``),
``retrieval`` 0.1, otherwise 0.1 of the first metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from headscope.errors import HeadscopeError
from headscope.results.atomic import atomic_write

DEFAULT_FRACTIONS: dict[str, float] = {"echo": 0.01, "induction": 0.15, "retrieval": 0.1}


def parse_fractions(items: list[str] | None) -> dict[str, float]:
    """``["echo=0.01", "induction=0.15"]`` -> dict; one-line error on bad input."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not 0.0 <= frac <= 1.0:
            raise HeadscopeError(f"bad --kv-fraction '{item}': write METRIC=FRACTION, e.g. induction=0.15.")
        out[key.strip()] = frac
    return out


def build_kv_policy(scores: Any, fractions: dict[str, float] | None = None) -> dict[str, Any]:
    """The policy as a JSON-able dict (see the module docstring)."""
    metrics = scores.metrics
    if fractions:
        missing = [m for m in fractions if m not in metrics]
        if missing:
            raise HeadscopeError(f"--kv-fraction names metric '{missing[0]}' but the scores have {metrics}.")
        chosen = dict(fractions)
    else:
        chosen = {m: f for m, f in DEFAULT_FRACTIONS.items() if m in metrics} or {metrics[0]: 0.1}
    kept: dict[tuple[int, int], list[str]] = {}
    for metric, frac in chosen.items():
        rows = scores.top(len(scores), metric=metric)
        k = math.ceil(frac * len(rows)) if frac > 0 else 0
        for r in rows.iloc[:k].itertuples():
            kept.setdefault((int(r.layer), int(r.head)), []).append(metric)
    prov = scores.provenance
    model_info = prov.get("model", {})
    group = max(1, int(model_info.get("n_heads", 1)) // max(1, int(model_info.get("n_kv_heads", 1) or 1)))
    heads = [
        {"layer": layer, "head": head, "kv_head": head // group, "reasons": reasons}
        for (layer, head), reasons in sorted(kept.items())
    ]
    kv_heads = sorted({(h["layer"], h["kv_head"]) for h in heads})
    return {
        "model": model_info.get("model_id", scores["model"].iloc[0] if len(scores) else None),
        "analyzer": prov.get("analyzer"),
        "rule": "keep a full KV cache for the top fraction of query heads per metric; all other heads "
        "may be compressed",
        "fractions": chosen,
        "n_heads_total": int(len(scores.top(len(scores), metric=next(iter(chosen))))),
        "keep_full_kv_heads": heads,
        "keep_full_kv_groups": [{"layer": layer, "kv_head": kv} for layer, kv in kv_heads],
    }


def export_kv_policy(scores: Any, path: str | Path, fractions: dict[str, float] | None = None) -> Path:
    """Write :func:`build_kv_policy` to ``path`` (JSON, atomically)."""
    path = Path(path)
    if path.suffix != ".json":
        raise HeadscopeError(f"--export-kv-policy {path} should end in .json: e.g. kv_policy.json.")
    policy = build_kv_policy(scores, fractions)
    with atomic_write(path, ".json.tmp") as tmp:
        tmp.write_text(json.dumps(policy, indent=2))
    return path
