"""Multi-metric figures built from HeadScores."""

from __future__ import annotations

from typing import Any

import numpy as np


def all_metric_heatmaps(scores: Any, title: str | None = None) -> Any:
    """One layer x head heatmap per metric, side by side, each with its own colour bar.

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = scores.metrics
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.08)
    for i, metric in enumerate(metrics, start=1):
        table = scores.matrix(metric)
        z = table.to_numpy(dtype=float)
        layers = [int(x) for x in table.index]
        heads = [int(x) for x in table.columns]
        labels = np.array([[f"{layer}.{head}" for head in heads] for layer in layers])
        signed = bool(np.nanmin(z) < 0)
        x_end = (i / len(metrics)) - 0.01
        fig.add_trace(
            go.Heatmap(
                z=z, x=heads, y=layers, customdata=labels,
                colorscale="RdBu" if signed else "Viridis", reversescale=signed,
                zmid=0 if signed else None,
                colorbar={"title": metric, "x": x_end, "len": 0.9, "thickness": 10},
                hovertemplate="head %{customdata}<br>" + metric + " = %{z:.6g}<extra></extra>",
            ),
            row=1, col=i,
        )
        fig.update_yaxes(autorange="reversed", title_text="layer" if i == 1 else None, dtick=1, row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=i)
    model = scores.provenance.get("model", {}).get("model_id", scores["model"].iloc[0])
    fig.update_layout(
        title=title or f"{model} on {scores['task'].iloc[0]}",
        template="plotly_white",
        height=max(380, 22 * int(scores['layer'].max() + 1) + 160),
        width=max(700, 380 * len(metrics)),
    )
    return fig
