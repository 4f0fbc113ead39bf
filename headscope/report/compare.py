"""Diff two results (two models, two tasks, two seeds ...) head by head.

The two results are aligned on ``(metric, layer, head)`` (and ``position`` where both have it);
with different metric names (e.g. two analyzers) pass ``metric_a`` / ``metric_b`` explicitly.
Per metric pair the summary gives the Spearman rank correlation of the scores over the heads
both results have, the overlap of their top-k heads, and the largest differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from headscope.errors import HeadscopeError
from headscope.stats import spearman


@dataclass
class Comparison:
    """``table``: one row per aligned head (``score_a, score_b, diff, rank_a, rank_b``);
    ``summary``: one row per metric pair; ``name_a``/``name_b``: the two results' names."""

    table: pd.DataFrame
    summary: pd.DataFrame
    name_a: str
    name_b: str


def _pick(scores: Any, metric: str | None) -> pd.DataFrame:
    frame = pd.DataFrame(scores)
    if "position" in frame.columns:
        frame = frame[frame["position"].isna() | (frame["position"].astype(str) == "all")]
    if metric is not None:
        if metric not in set(frame["metric"]):
            raise HeadscopeError(f"no metric '{metric}' in this result: it has {', '.join(dict.fromkeys(frame['metric']))}.")
        frame = frame[frame["metric"] == metric]
    return frame


def result_name(scores: Any) -> str:
    """``model/task/analyzer`` of a result (from its first row)."""
    row = pd.DataFrame(scores).iloc[0]
    return f"{row['model']}/{row['task']}/{row['analyzer']}"


def compare_results(a: Any, b: Any, metric_a: str | None = None, metric_b: str | None = None,
                    k: int = 10) -> Comparison:
    """Align two HeadScores and summarise their agreement.

    Args:
        a, b: HeadScores (e.g. :func:`headscope.read_parquet` of two runs).
        metric_a, metric_b: compare these two metrics (default: every metric the two share).
        k: top-k size for the overlap (NaN for a metric where ``k`` is not below the number of
            heads both results share: both top-k sets would be every head).

    Returns:
        A :class:`Comparison`. Raises HeadscopeError when nothing aligns.
    """
    fa, fb = _pick(a, metric_a), _pick(b, metric_b)
    if metric_a is not None or metric_b is not None:
        if metric_a is None or metric_b is None:
            raise HeadscopeError("give both --metric-a and --metric-b (or neither).")
        pairs = [(metric_a, metric_b)]
    else:
        shared = [m for m in dict.fromkeys(fa["metric"]) if m in set(fb["metric"])]
        if not shared:
            raise HeadscopeError(
                f"the two results share no metric (A: {', '.join(dict.fromkeys(fa['metric']))}; "
                f"B: {', '.join(dict.fromkeys(fb['metric']))}): pass --metric-a and --metric-b."
            )
        pairs = [(m, m) for m in shared]
    tables, rows = [], []
    for ma, mb in pairs:
        left = fa[fa["metric"] == ma][["layer", "head", "score"]].rename(columns={"score": "score_a"})
        right = fb[fb["metric"] == mb][["layer", "head", "score"]].rename(columns={"score": "score_b"})
        merged = left.merge(right, on=["layer", "head"], how="outer")
        merged.insert(0, "metric", ma if ma == mb else f"{ma} vs {mb}")
        merged["label"] = merged["layer"].astype(int).astype(str) + "." + merged["head"].astype(int).astype(str)
        merged["diff"] = merged["score_b"] - merged["score_a"]
        merged["rank_a"] = merged["score_a"].rank(ascending=False, method="min")
        merged["rank_b"] = merged["score_b"].rank(ascending=False, method="min")
        both = merged.dropna(subset=["score_a", "score_b"])
        top_a = set(both.nlargest(k, "score_a")["label"])
        top_b = set(both.nlargest(k, "score_b")["label"])
        biggest = both.reindex(both["diff"].abs().sort_values(ascending=False).index).head(3)
        rows.append({
            "metric": merged["metric"].iloc[0], "heads_a": int(merged["score_a"].notna().sum()),
            "heads_b": int(merged["score_b"].notna().sum()), "heads_both": len(both),
            "spearman": spearman(both["score_a"].to_numpy(), both["score_b"].to_numpy()),
            # with k >= the shared heads both top-k sets are every head: the overlap says nothing
            f"top{k}_overlap": len(top_a & top_b) / k if k < len(both) else float("nan"),
            "mean_abs_diff": float(both["diff"].abs().mean()) if len(both) else float("nan"),
            "largest_diffs": ", ".join(f"{r.label} ({r.diff:+.3g})" for r in biggest.itertuples()),
        })
        tables.append(merged)
    table = pd.concat(tables, ignore_index=True)
    if not len(table.dropna(subset=["score_a", "score_b"])):
        raise HeadscopeError("the two results have no head in common to compare.")
    return Comparison(table, pd.DataFrame(rows), result_name(a), result_name(b))


def write_comparison_html(comparison: Comparison, out: Any) -> Any:
    """A self-contained page: the agreement summary, one figure per compared metric, the
    largest per-head differences."""
    import html as _html

    from headscope.plots import figure_div, rank_comparison
    from headscope.report.build import render_page
    from headscope.results.atomic import atomic_write

    sections = [f"<p>A = {_html.escape(comparison.name_a)}<br>B = {_html.escape(comparison.name_b)}</p>",
                "<h2>agreement per metric</h2>", comparison.summary.to_html(index=False, float_format="%.4f")]
    for i, metric in enumerate(dict.fromkeys(comparison.table["metric"])):
        fig = rank_comparison(comparison, metric)
        sections.append(f"<h2>{_html.escape(metric)}</h2><div class='fig'>{figure_div(fig, f'cmp{i}')}</div>")
    diffs = comparison.table.dropna(subset=["diff"])
    top = diffs.reindex(diffs["diff"].abs().sort_values(ascending=False).index).head(30)
    sections += ["<h2>largest differences (B − A)</h2>",
                 top[["metric", "label", "score_a", "score_b", "diff", "rank_a", "rank_b"]].to_html(
                     index=False, float_format="%.4f")]
    from pathlib import Path

    target = Path(out).expanduser()
    with atomic_write(target, suffix=".html") as tmp:
        tmp.write_text(render_page("headscope compare", sections), encoding="utf-8")
    return target
