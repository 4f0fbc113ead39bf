"""Faceted layer x head heatmaps: several metrics, models or tasks side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from headscope.errors import HeadscopeError
from headscope.plots.heatmap import heatmap_trace, is_signed


def _panels(scores: Any, by: str, metrics: Sequence[str] | None) -> list[tuple[str, Any, str]]:
    """(panel title, scores subset, metric) for each facet."""
    from headscope.results import HeadScores

    if isinstance(scores, Mapping):  # {name: HeadScores}: one panel per entry
        metric_list = list(metrics or [])
        out = []
        for name, part in scores.items():
            for m in metric_list or [part.metrics[0]]:
                out.append((f"{name}: {m}" if len(metric_list) > 1 else str(name), part, m))
        return out
    metric_list = list(metrics or scores.metrics)
    if by == "metric":
        return [(m, scores, m) for m in metric_list]
    if by not in ("model", "task", "analyzer"):
        raise HeadscopeError(f"facet by must be metric, model, task or analyzer; got '{by}'.")
    out = []
    for value in dict.fromkeys(scores[by]):
        part = HeadScores(scores[scores[by] == value])
        part.provenance = scores.provenance
        for m in metric_list:
            if m in part.metrics:
                out.append((f"{value}: {m}" if len(metric_list) > 1 else str(value), part, m))
    return out


def facet_heatmaps(
    scores: Any,
    metrics: Sequence[str] | None = None,
    by: str = "metric",
    cols: int | None = None,
    shared_scale: bool | None = None,
    title: str | None = None,
) -> Any:
    """Layer x head heatmaps side by side (wrapping after ``cols`` panels).

    Args:
        scores: one :class:`HeadScores` (facets from its ``by`` column), or a mapping
            ``{name: HeadScores}`` (one facet per entry, e.g. two models).
        metrics: metrics to draw (default: all of them / the first of each mapping entry).
        by: ``metric`` (default), ``model``, ``task`` or ``analyzer``.
        cols: panels per row (default: all in one row, up to 4).
        shared_scale: one colour range for all panels (default: when all panels show one metric).

    Returns:
        ``plotly.graph_objects.Figure``; each panel's hover shows the exact value and metadata.
    """
    from plotly.subplots import make_subplots

    panels = _panels(scores, by, metrics)
    if not panels:
        raise HeadscopeError("nothing to plot: no metric matched.")
    n = len(panels)
    cols = cols or min(n, 4)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=min(0.11, 0.8 / max(cols, 1)), vertical_spacing=0.12 if rows > 1 else 0.1)
    same_metric = len({p[2] for p in panels}) == 1
    share = same_metric if shared_scale is None else shared_scale
    bound = None
    if share:
        bound = max(float(np.nanmax(np.abs(part.matrix(m).to_numpy(dtype=float))))
                    for _, part, m in panels)
    n_layers = 1
    for i, (name, part, metric) in enumerate(panels):
        r, c = divmod(i, cols)
        z = part.matrix(metric).to_numpy(dtype=float)
        n_layers = max(n_layers, z.shape[0])
        axis = fig.layout["xaxis" if i == 0 else f"xaxis{i + 1}"]
        colorbar = {"title": {"text": metric if not share else "", "side": "right"}, "len": 0.9 / rows,
                    "thickness": 10, "x": axis.domain[1] + 0.005, "xanchor": "left", "y": 1 - (r + 0.5) / rows}
        trace = heatmap_trace(part, metric, colorbar=colorbar, bound=bound,
                              showscale=not share or i == n - 1)
        if share and bound is not None and not is_signed(z):
            trace.update(zmin=0, zmax=bound)
        trace.update(name=name)
        fig.add_trace(trace, row=r + 1, col=c + 1)
        fig.update_yaxes(autorange="reversed", title_text="layer" if c == 0 else None, dtick=max(1, z.shape[0] // 15),
                         row=r + 1, col=c + 1)
        fig.update_xaxes(title_text="head", dtick=1 if z.shape[1] <= 16 else 4, row=r + 1, col=c + 1)
    fig.update_layout(
        title=title or ("heads by " + by if not isinstance(scores, Mapping) else "head scores"),
        template="plotly_white",
        height=rows * max(320, 18 * n_layers + 120) + 60,
        width=max(700, 330 * cols),
    )
    return fig
