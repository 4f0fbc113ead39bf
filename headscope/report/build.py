"""``build_report``: one self-contained HTML page from one or more results.

The page has, per result: where it came from (file, model, task, analyzer), the provenance
table, the top heads per metric, and its figures (layer x head heatmaps of every metric; the
per-position patching heatmap where the result has positions); then figures across results
(the shared metrics side by side) and any extra figures the caller passes (the recipe runner
adds path-patching matrices and the circuit graph). plotly.js is inlined once, so the page
works offline and from a file:// URL.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from headscope.errors import HeadscopeError
from headscope.results import HeadScores, read_parquet
from headscope.results.atomic import atomic_write

MAX_METRICS = 8
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1250px;
color:#222;padding:0 16px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:.88em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:0;white-space:pre-wrap;word-break:break-word;max-width:900px}
details{margin:6px 0}.muted{color:#777}.fig{margin:12px 0}
.tops{display:flex;flex-wrap:wrap;gap:18px}
"""


def _load(item: str | Path | HeadScores) -> tuple[str, HeadScores]:
    if isinstance(item, HeadScores):
        from headscope.report.compare import result_name

        return result_name(item), item
    path = Path(item)
    return str(path), read_parquet(path)


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        text = json.dumps(value, indent=1, default=str)
        if len(text) > 300:
            first = text.splitlines()[0] + " …"
            return f"<details><summary>{html.escape(first)}</summary><pre>{html.escape(text)}</pre></details>"
        return f"<pre>{html.escape(text)}</pre>"
    return html.escape(str(value))


def provenance_html(prov: dict[str, Any]) -> str:
    """Provenance as a two-column HTML table (nested values as collapsible JSON)."""
    if not prov:
        return "<p class='muted'>no provenance recorded</p>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in prov.items())
    return f"<table class='prov'>{rows}</table>"


def top_heads_html(scores: HeadScores, k: int = 10, order: str | None = None) -> str:
    """The top ``k`` heads of every metric, one small table each, headed by the metric and its
    ranking (``order`` as :meth:`HeadScores.top`; default |score| for signed metrics)."""
    from headscope.results.head_scores import ORDER_TITLES

    parts = []
    for metric in scores.metrics[:MAX_METRICS * 2]:
        how = scores.order_for(metric, order)
        top = scores.top(k, metric=metric, order=how)
        has_err = "stderr" in top.columns and top["stderr"].notna().any()
        head = "<tr><th>rank</th><th>head</th><th>score</th>" + ("<th>± stderr</th>" if has_err else "") + "</tr>"
        body = ""
        for rank, r in enumerate(top.itertuples(), start=1):
            err = f"<td class='num'>{r.stderr:.4f}</td>" if has_err else ""
            body += f"<tr><td class='num'>{rank}</td><td>{r.layer}.{r.head}</td><td class='num'>{r.score:.4f}</td>{err}</tr>"
        parts.append(f"<div><b>{html.escape(metric)}</b> <span class='muted'>({ORDER_TITLES[how]})</span>"
                     f"<table>{head}{body}</table></div>")
    return f"<div class='tops'>{''.join(parts)}</div>"


def whole_head_rows(scores: HeadScores) -> HeadScores:
    """Rows that score the head as a whole (no position, or position ``all``)."""
    if "position" not in scores.columns:
        return scores
    keep = scores["position"].isna() | (scores["position"].astype(str) == "all")
    out = HeadScores(scores[keep])
    out.provenance = scores.provenance
    return out


def result_figures(scores: HeadScores) -> list[tuple[str, Any]]:
    """The default figures of one result: heatmaps (+ per-position patching)."""
    from headscope.plots import facet_heatmaps, head_heatmap, position_patching_heatmap

    figs: list[tuple[str, Any]] = []
    whole = whole_head_rows(scores)
    if len(whole):
        metrics = whole.metrics[:MAX_METRICS]
        if len(metrics) == 1:
            figs.append((f"{metrics[0]} per head", head_heatmap(whole, metrics[0])))
        else:
            figs.append(("scores per head", facet_heatmaps(whole, metrics=metrics, cols=min(4, len(metrics)))))
    if len(whole) < len(scores):
        figs.append(("per-position patching", position_patching_heatmap(scores)))
    return figs


def cross_figures(loaded: list[tuple[str, HeadScores]]) -> list[tuple[str, Any]]:
    """Metrics shared by several results, side by side (one panel per result)."""
    from headscope.plots import facet_heatmaps

    if len(loaded) < 2:
        return []
    figs = []
    counts: dict[str, int] = {}
    for _, s in loaded:
        for m in whole_head_rows(s).metrics:
            counts[m] = counts.get(m, 0) + 1
    for metric in [m for m, c in counts.items() if c > 1][:3]:
        panels = {Path(name).stem if name.endswith(".parquet") else name: whole_head_rows(s)
                  for name, s in loaded if metric in whole_head_rows(s).metrics}
        figs.append((f"{metric} across results", facet_heatmaps(panels, metrics=[metric], shared_scale=True,
                                                                  title=f"{metric} across results")))
    return figs


def render_page(title: str, sections: list[str]) -> str:
    """A full HTML page with plotly.js inlined once."""
    from plotly.offline import get_plotlyjs

    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='muted'>headscope report, generated {stamp}</p>"
        + "".join(sections) + "</body></html>"
    )


def build_report(
    results: Sequence[str | Path | HeadScores],
    out: str | Path,
    title: str | None = None,
    top_k: int = 10,
    extra_figures: Sequence[tuple[str, Any]] = (),
    notes: str | None = None,
    order: str | None = None,
) -> Path:
    """Write one self-contained HTML report for ``results``.

    Args:
        results: Parquet paths and/or HeadScores.
        out: the ``.html`` file to write (atomically).
        title: page title (default: "headscope report").
        top_k: heads listed per metric.
        extra_figures: ``(heading, plotly Figure)`` pairs appended after the per-result figures.
        notes: optional HTML-escaped paragraph under the title (e.g. the recipe's description).
        order: ranking of the top heads, ``abs``, ``desc`` or ``asc`` (default: |score| for a
            signed metric, one with a negative score, else highest first; :meth:`HeadScores.top`).

    Returns:
        The path written.
    """
    from headscope.plots import figure_div

    if not results and not extra_figures:
        raise HeadscopeError("nothing to report: give at least one results .parquet file.")
    loaded = [_load(r) for r in results]
    sections: list[str] = []
    if notes:
        sections.append(f"<p>{html.escape(notes)}</p>")
    toc = "".join(f"<li><a href='#r{i}'>{html.escape(name)}</a></li>" for i, (name, _) in enumerate(loaded))
    if toc:
        sections.append(f"<ul>{toc}</ul>")
    fig_no = 0
    for i, (name, scores) in enumerate(loaded):
        first = pd.DataFrame(scores).iloc[0] if len(scores) else None
        what = "" if first is None else f"{first['model']} · {first['task']} · {first['analyzer']}"
        body = [f"<h2 id='r{i}'>{html.escape(what or name)}</h2><p class='muted'>{html.escape(name)}</p>",
                "<h3>top heads</h3>", top_heads_html(scores, top_k, order)]
        for heading, fig in result_figures(scores) if len(scores) else []:
            body.append(f"<h3>{html.escape(heading)}</h3><div class='fig'>{figure_div(fig, f'fig{fig_no}')}</div>")
            fig_no += 1
        body.append("<h3>provenance</h3>" + provenance_html(scores.provenance))
        sections.append("".join(body))
    more = [*cross_figures(loaded), *extra_figures]
    if more:
        sections.append("<h2>figures across results</h2>")
        for heading, fig in more:
            sections.append(f"<h3>{html.escape(heading)}</h3><div class='fig'>{figure_div(fig, f'fig{fig_no}')}</div>")
            fig_no += 1
    target = Path(out).expanduser()
    with atomic_write(target, suffix=".html") as tmp:
        tmp.write_text(render_page(title or "headscope report", sections), encoding="utf-8")
    return target
