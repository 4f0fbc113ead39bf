"""Export a KV-cache retention policy from head scores (RazorAttention, Tang et al. 2024).

A KV cache is stored per KV head, so the policy ranks and keeps KV *groups* (a KV head and the
query heads that read it), never single query heads. For each metric with fraction ``f``:

- group score = the maximum of the metric over the group's query heads;
- keep the top ``round(f * n_groups)`` groups of the model (``n_groups = n_layers * n_kv_heads``,
  all layers ranked together; ties broken by layer, then KV head);
- the policy is the union over metrics; every query head of a kept group is listed.

So the share of KV caches kept for one metric is what was asked (up to rounding), also under
GQA, where keeping the top fraction of *query* heads could keep up to ``group_size`` times
more KV groups. Without GQA a group is one head and this is the plain top fraction of heads.

Reference: Huawei's RazorAttention implementation, ``mindspore-ai/golden-stick`` (commit
a50ddc9), ``mindspore_gs/experimental/long_context_compress/razor_attention/``:
``wrappers/vllm_mindspore/attention_wrappers.py:131-143`` (per-KV-group maximum of the echo and
induction scores), ``razor_attention.py:225-244`` (``_select_top_heads``: sort all layers'
group scores together, keep ``round(len * ratio)``) and ``:209-218`` (union of echo and
induction heads), ``ra_config.py:54-55`` (defaults ``echo_head_ratio=0.01``,
``induction_head_ratio=0.14``). Departure: the reference keeps every group whose score equals
one of the top values (ties can add groups); headscope keeps exactly ``round(f * n_groups)``.

Default fractions (:data:`DEFAULT_FRACTIONS`): ``echo`` 0.01 and ``induction`` 0.14 (the
reference's, about 15% of heads together) when those metrics are present, ``retrieval`` 0.1,
otherwise 0.1 of the first metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from headscope.errors import HeadscopeError
from headscope.results.atomic import atomic_write

DEFAULT_FRACTIONS: dict[str, float] = {"echo": 0.01, "induction": 0.14, "retrieval": 0.1}
Group = tuple[int, int]


def parse_fractions(items: list[str] | None) -> dict[str, float]:
    """``["echo=0.01", "induction=0.14"]`` -> dict; one-line error on bad input."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not 0.0 <= frac <= 1.0:
            raise HeadscopeError(f"bad --kv-fraction '{item}': write METRIC=FRACTION, e.g. induction=0.14.")
        out[key.strip()] = frac
    return out


def group_scores(scores: Any, metric: str, group_size: int) -> dict[Group, float]:
    """``(layer, kv_head) -> max`` of ``metric`` over the group's query heads (NaN heads skipped)."""
    rows = scores[scores["metric"] == metric]
    out: dict[Group, float] = {}
    for layer, head, value in zip(rows["layer"], rows["head"], rows["score"], strict=True):
        if value != value:  # NaN: head not scored
            continue
        key = (int(layer), int(head) // group_size)
        out[key] = max(out.get(key, -math.inf), float(value))
    return out


def top_groups(groups: dict[Group, float], frac: float, n_groups: int) -> list[Group]:
    """The ``round(frac * n_groups)`` best groups (ties: lower layer, then lower KV head)."""
    k = round(frac * n_groups)
    return sorted(groups, key=lambda g: (-groups[g], g))[:k]


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
    prov = scores.provenance
    model_info = prov.get("model", {})
    n_layers = int(model_info.get("n_layers") or (int(scores["layer"].max()) + 1))
    n_heads = int(model_info.get("n_heads") or (int(scores["head"].max()) + 1))
    n_kv = int(model_info.get("n_kv_heads") or n_heads)
    group = max(1, n_heads // max(1, n_kv))
    n_groups = n_layers * n_kv
    kept: dict[Group, list[str]] = {}
    for metric, frac in chosen.items():
        for g in top_groups(group_scores(scores, metric, group), frac, n_groups):
            kept.setdefault(g, []).append(metric)
    groups = [{"layer": layer, "kv_head": kv, "reasons": reasons} for (layer, kv), reasons in sorted(kept.items())]
    heads = [
        {"layer": g["layer"], "head": h, "kv_head": g["kv_head"], "reasons": g["reasons"]}
        for g in groups for h in range(g["kv_head"] * group, (g["kv_head"] + 1) * group)
    ]
    return {
        "model": model_info.get("model_id", scores["model"].iloc[0] if len(scores) else None),
        "analyzer": prov.get("analyzer"),
        "rule": "per metric, keep a full KV cache for the top round(fraction * n_kv_groups) KV groups, a group "
        "scored by the max over its query heads (RazorAttention); the union over metrics; all other KV "
        "heads may be compressed",
        "fractions": chosen,
        "n_heads_total": n_layers * n_heads,
        "n_kv_groups_total": n_groups,
        "kept_kv_share": len(groups) / n_groups if n_groups else 0.0,
        "keep_full_kv_groups": groups,
        "keep_full_kv_heads": heads,
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
