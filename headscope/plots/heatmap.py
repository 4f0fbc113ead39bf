"""Layer x head heatmap of one metric."""

from __future__ import annotations

from typing import Any

import numpy as np


def head_heatmap(scores: Any, metric: str | None = None, title: str | None = None) -> Any:
    """A layer (y) x head (x) heatmap; hover shows the head label and the exact score.

    Signed metrics (any negative value) get a diverging colour scale centred on zero.

    Args:
        scores: a :class:`headscope.results.HeadScores`.
        metric: which metric (default: the first).

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    metric = metric or scores.metrics[0]
    table = scores.matrix(metric)
    z = table.to_numpy(dtype=float)
    layers = [int(x) for x in table.index]
    heads = [int(x) for x in table.columns]
    labels = np.array([[f"{layer}.{head}" for head in heads] for layer in layers])
    signed = bool(np.nanmin(z) < 0) if np.isfinite(z).any() else False
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=heads,
            y=layers,
            customdata=labels,
            colorscale="RdBu" if signed else "Viridis",
            reversescale=signed,
            zmid=0 if signed else None,
            zmin=-bound if signed else None,
            zmax=bound if signed else None,
            colorbar={"title": metric},
            hovertemplate="head %{customdata}<br>layer %{y}, head %{x}<br>"
            + metric
            + " = %{z:.6g}<extra></extra>",
        )
    )
    prov = scores.provenance
    model = prov.get("model", {}).get("model_id") or (scores["model"].iloc[0] if len(scores) else "")
    task = scores["task"].iloc[0] if len(scores) else ""
    fig.update_layout(
        title=title or f"{metric}: {model} on {task}",
        xaxis={"title": "head", "dtick": 1},
        yaxis={"title": "layer", "autorange": "reversed", "dtick": 1},
        template="plotly_white",
        height=max(360, 22 * len(layers) + 160),
    )
    return fig
