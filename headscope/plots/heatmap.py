"""Layer x head heatmap of one metric."""

from __future__ import annotations

from typing import Any

import numpy as np

HOVER_COLUMNS = ("stderr", "n", "kv_head", "raw_metric")


def is_signed(z: np.ndarray) -> bool:
    """True when a metric takes negative values (then a diverging scale centred on 0 is used)."""
    return bool(np.isfinite(z).any() and np.nanmin(z) < 0)


def heatmap_trace(scores: Any, metric: str, colorbar: dict[str, Any] | None = None,
                  bound: float | None = None, showscale: bool = True) -> Any:
    """One ``go.Heatmap`` (layer on y, head on x) of ``metric``; hover shows the value and metadata.

    The hover text names the head (``L.H``), the exact score and, where the scores carry them,
    ``stderr``, ``n``, ``kv_head`` and ``raw_metric``, plus the model, task and analyzer.
    Signed metrics get the diverging ``RdBu`` scale symmetric about 0 (``bound`` fixes the
    range, e.g. to share it across facets); unsigned ones ``Viridis``.
    """
    import plotly.graph_objects as go

    table = scores.matrix(metric)
    z = table.to_numpy(dtype=float)
    layers = [int(x) for x in table.index]
    heads = [int(x) for x in table.columns]
    rows = scores[scores["metric"] == metric]
    extra_cols = [c for c in HOVER_COLUMNS if c in rows.columns and rows[c].notna().any()]
    meta = {c: scores.matrix(metric, value=c).reindex(index=table.index, columns=table.columns)
            for c in extra_cols}
    first = rows.iloc[0] if len(rows) else None
    context = "" if first is None else f"{first['model']} · {first['task']} · {first['analyzer']}"
    text = np.empty(z.shape, dtype=object)
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            bits = [f"{c} = {meta[c].iat[i, j]:.4g}" for c in extra_cols if np.isfinite(meta[c].iat[i, j])]
            text[i, j] = f"head {layer}.{head}<br>" + "<br>".join(bits) + (f"<br>{context}" if context else "")
    signed = is_signed(z)
    if bound is None:
        bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    return go.Heatmap(
        z=z, x=heads, y=layers, customdata=text,
        colorscale="RdBu" if signed else "Viridis",
        reversescale=signed,
        zmid=0 if signed else None,
        zmin=-bound if signed else None,
        zmax=bound if signed else None,
        colorbar=colorbar or {"title": metric},
        showscale=showscale,
        hovertemplate=metric + " = %{z:.6g}<br>%{customdata}<extra></extra>",
    )


def head_heatmap(scores: Any, metric: str | None = None, title: str | None = None) -> Any:
    """A layer (y) x head (x) heatmap; hover shows the head label, the exact score and metadata.

    Signed metrics (any negative value) get a diverging colour scale centred on zero.

    Args:
        scores: a :class:`headscope.results.HeadScores`.
        metric: which metric (default: the first).

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    metric = metric or scores.metrics[0]
    trace = heatmap_trace(scores, metric)
    n_layers = len(trace.y)
    fig = go.Figure(trace)
    prov = scores.provenance
    model = prov.get("model", {}).get("model_id") or (scores["model"].iloc[0] if len(scores) else "")
    task = scores["task"].iloc[0] if len(scores) else ""
    fig.update_layout(
        title=title or f"{metric}: {model} on {task}",
        xaxis={"title": "head", "dtick": 1},
        yaxis={"title": "layer", "autorange": "reversed", "dtick": 1},
        template="plotly_white",
        height=max(360, 22 * n_layers + 160),
    )
    return fig
