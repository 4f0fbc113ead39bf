"""Figures for ``headscope compare``: two results' scores side by side and against each other."""

from __future__ import annotations

from typing import Any

import numpy as np


def rank_comparison(comparison: Any, metric: str | None = None, title: str | None = None) -> Any:
    """Scatter of score A vs score B per head (hover: head, both scores, both ranks), with the
    y = x line, next to a layer x head heatmap of ``B - A`` over the heads both results have.

    Args:
        comparison: a :class:`headscope.report.compare.Comparison`.
        metric: which compared metric (default: the first).

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = comparison.table
    metric = metric or table["metric"].iloc[0]
    rows = table[table["metric"] == metric].dropna(subset=["score_a", "score_b"])
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.12,
                        subplot_titles=(f"{metric}: A vs B (per head)", f"{metric}: B − A"))
    custom = np.stack([rows["label"], rows["rank_a"], rows["rank_b"]], axis=-1) if len(rows) else None
    fig.add_trace(go.Scatter(
        x=rows["score_a"], y=rows["score_b"], mode="markers", name="heads", customdata=custom,
        marker={"size": 7, "color": rows["layer"], "colorscale": "Viridis", "showscale": False, "opacity": 0.8},
        hovertemplate="head %{customdata[0]}<br>A = %{x:.4g} (rank %{customdata[1]})<br>"
        "B = %{y:.4g} (rank %{customdata[2]})<extra></extra>",
    ), row=1, col=1)
    lo = float(np.nanmin([rows["score_a"].min(), rows["score_b"].min()])) if len(rows) else 0.0
    hi = float(np.nanmax([rows["score_a"].max(), rows["score_b"].max()])) if len(rows) else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                             line={"dash": "dot", "color": "#888"}, hoverinfo="skip"), row=1, col=1)
    pivot = rows.pivot_table(index="layer", columns="head", values="diff", aggfunc="first")
    z = pivot.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig.add_trace(go.Heatmap(
        z=z, x=[int(h) for h in pivot.columns], y=[int(x) for x in pivot.index], colorscale="RdBu",
        reversescale=True, zmid=0, zmin=-bound, zmax=bound, colorbar={"title": "B − A", "thickness": 10},
        hovertemplate="head %{y}.%{x}<br>B − A = %{z:.4g}<extra></extra>",
    ), row=1, col=2)
    fig.update_xaxes(title_text=f"A: {comparison.name_a}", row=1, col=1)
    fig.update_yaxes(title_text=f"B: {comparison.name_b}", row=1, col=1)
    fig.update_xaxes(title_text="head", dtick=1 if z.shape[1:] and z.shape[1] <= 16 else 4, row=1, col=2)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=2)
    fig.update_layout(title=title or f"compare {comparison.name_a} (A) with {comparison.name_b} (B)",
                      template="plotly_white", height=max(440, 16 * len(pivot) + 200), width=1100,
                      showlegend=False)
    return fig
