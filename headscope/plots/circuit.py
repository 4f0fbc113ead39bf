"""The circuit graph: the edges an :class:`~headscope.results.edge_scores.EdgeScores` keeps, drawn
with plotly (one self-contained interactive figure).

Components sit left to right in residual order (input, then per layer its heads and MLP, then
the logits) and top to bottom by unit. An edge is a line from its sender to the receiver's
q, k, v or MLP/logits input (three input ports per head, slightly offset), its width
proportional to ``|score|`` and its colour the sign (blue: patching the edge lowers the
metric, i.e. the edge carries the clean behaviour; red: raises it). Hovering an edge or node
shows its name and score. Per-position tables (column ``position``) are drawn one line per
edge, the scores of its shown positions summed, the positions listed on hover. Token-level
routes (column ``via``) are drawn over (residual state, position) by :func:`token_route_graph`:
red lines through heads, blue through MLPs, grey along the residual.
"""

from __future__ import annotations

import re
from typing import Any

PORT_OFFSET = {"q": -0.2, "k": 0.0, "v": 0.2, "in": 0.0}


def _position(name: str, n_layers: int) -> tuple[float, float]:
    """(x, y) of a component: x = residual order, y = unit (heads, KV heads) or a middle row."""
    if name == "input":
        return 0.0, 0.0
    if name == "logits":
        return 2.0 * n_layers + 1.0, 0.0
    m = re.fullmatch(r"a(\d+)\.(h|kv)(\d+)", name)
    if m:
        return 2.0 * int(m.group(1)) + 1.0, float(m.group(3)) + (0.5 if m.group(2) == "kv" else 0.0)
    m = re.fullmatch(r"m(\d+)", name)
    if m:
        return 2.0 * int(m.group(1)) + 2.0, -1.0
    raise ValueError(f"not a component name: {name}")


def by_edge(rows: Any) -> Any:
    """One row per edge with an ``at`` label: per-position rows (column ``position``) are summed
    over the positions shown, ``at`` naming them (``" at positions 3, 7"``); otherwise ``at`` is empty."""
    import pandas as pd

    if "position" not in rows.columns:
        return pd.DataFrame(rows).assign(at="")
    keys = ["sender", "receiver", "receiver_input"]
    grouped = pd.DataFrame(rows).groupby(keys, sort=False)
    out = grouped["score"].sum().reset_index()
    out["at"] = [" at positions " + ", ".join(str(int(p)) for p in sorted(g)) for _, g in grouped["position"]]
    return out


def _node_x(name: str) -> float:
    """x of a token-route node: ``x{l}`` at 2l, ``x{l}.mid`` at 2l + 1."""
    m = re.fullmatch(r"x(\d+)(\.mid)?", name)
    if m is None:
        raise ValueError(f"not a token-route node: {name}")
    return 2.0 * int(m.group(1)) + (1.0 if m.group(2) else 0.0)


def token_route_graph(rows: Any, title: str | None = None) -> Any:
    """Token-level routes (``routes level=token``): nodes are residual states at (layer,
    position), x by residual order, y by position; one line per edge (mean importance over the
    prompts that have it, named on hover with its component ``via``)."""
    import pandas as pd
    import plotly.graph_objects as go

    keys = ["sender", "source_position", "receiver", "position", "via"]
    grouped = pd.DataFrame(rows).groupby(keys, sort=False)["score"].agg(["mean", "count"]).reset_index()
    fig = go.Figure()
    nodes: set[tuple[float, int, str]] = set()
    for row in grouped.itertuples():
        x0, x1 = _node_x(row.sender), _node_x(row.receiver)
        y0, y1 = int(row.source_position), int(row.position)
        nodes |= {(x0, y0, row.sender), (x1, y1, row.receiver)}
        label = f"{row.sender}[{y0}] -> {row.receiver}[{y1}] via {row.via}: {row.mean:.3f} ({row.count} prompts)"
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", text=[label, label],
                                 line={"width": 0.5 + 5.0 * float(row.mean), "color": "#c0392b" if row.via.startswith("a")
                                       else "#1f5fbf" if row.via.startswith("m") else "#888"}, showlegend=False))
    if nodes:
        pts = sorted(nodes)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", hoverinfo="text",
                                 text=[f"{p[2]}[{p[1]}]" for p in pts], marker={"size": 8, "color": "#444"}, showlegend=False))
    fig.update_layout(title=title or f"information flow routes: {len(grouped)} edges",
                      xaxis={"title": "residual state (x0, x0.mid, x1, ...)"}, yaxis={"title": "token position"},
                      template="plotly_white")
    return fig


def edge_circuit_graph(scores: Any, only_circuit: bool = True, title: str | None = None) -> Any:
    """A plotly figure of the circuit (or of every edge with ``only_circuit=False``)."""
    import plotly.graph_objects as go

    rows = scores[scores["circuit"]] if only_circuit else scores
    if "via" in scores.columns:
        return token_route_graph(rows, title)
    rows = by_edge(rows)
    n_layers = int(max(scores["receiver_layer"].max(), scores["sender_layer"].max() + 1))
    fig = go.Figure()
    biggest = float(rows["score"].abs().max()) if len(rows) else 1.0
    nodes: dict[str, tuple[float, float]] = {}
    for row in rows.itertuples():
        x0, y0 = _position(row.sender, n_layers)
        x1, y1 = _position(row.receiver, n_layers)
        y1 += PORT_OFFSET.get(row.receiver_input, 0.0)
        nodes[row.sender] = (x0, y0)
        nodes[row.receiver] = _position(row.receiver, n_layers)
        width = 0.5 + 6.0 * abs(row.score) / (biggest or 1.0)
        colour = "#1f5fbf" if row.score < 0 else "#c0392b"
        label = f"{row.sender} -> {row.receiver}<{row.receiver_input}>: {row.score:.4g}{row.at}"
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", line={"width": width, "color": colour},
                                 hoverinfo="text", text=[label, label], showlegend=False))
    if nodes:
        names = list(nodes)
        fig.add_trace(go.Scatter(x=[nodes[n][0] for n in names], y=[nodes[n][1] for n in names], mode="markers+text",
                                 text=names, textposition="top center", marker={"size": 12, "color": "#444"},
                                 hoverinfo="text", showlegend=False))
    prov = getattr(scores, "provenance", {}) or {}
    method = str(scores["method"].iloc[0]) if len(scores) else ""
    fig.update_layout(
        title=title or f"circuit: {len(rows)} edges ({method}, {prov.get('model', {}).get('spec', '')})",
        xaxis={"title": "residual order (input, a0, m0, a1, m1, ..., logits)", "showgrid": False},
        yaxis={"title": "head / KV head (MLPs below)", "showgrid": False},
        template="plotly_white",
    )
    return fig
