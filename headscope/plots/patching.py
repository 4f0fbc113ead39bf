"""Patching views: per-position patching heatmaps, path-patching sender -> receiver matrices and
a circuit graph (Wang et al. 2022, "Interpretability in the Wild"; Heimersheim & Nanda 2024).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from headscope.errors import HeadscopeError

CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _label_order(frame: pd.DataFrame) -> list[str]:
    keys = frame.drop_duplicates("label")[["label", "layer", "head"]].sort_values(["layer", "head"])
    return keys["label"].tolist()


def position_patching_heatmap(scores: Any, act: str | None = None, top_k: int | None = 20,
                              title: str | None = None) -> Any:
    """Heads (rows) x positions (columns) of a per-position activation-patching result.

    Args:
        scores: HeadScores with a ``position`` column holding several positions (e.g.
            ``activation_patching`` with ``positions=named`` or ``each``: metrics ``z_patch@IO``...).
        act: which patched activation (the metric prefix, ``z``/``q``/``k``/``v``/``pattern``;
            default: the first found).
        top_k: keep the heads with the largest absolute effect at any position (None: all).

    Returns:
        ``plotly.graph_objects.Figure`` (diverging scale; 1 = the patch restores the clean metric).
    """
    import plotly.graph_objects as go

    frame = pd.DataFrame(scores)
    if "position" not in frame.columns:
        raise HeadscopeError("these scores have no position column: run activation_patching with positions=named or each.")
    frame = frame[frame["position"].astype(str) != "all"]
    if frame.empty:
        raise HeadscopeError("no per-position rows: run activation_patching with positions=named or each.")
    prefixes = list(dict.fromkeys(frame["metric"].str.split("@").str[0]))
    prefix = f"{act}_patch" if act else prefixes[0]
    frame = frame[frame["metric"].str.split("@").str[0] == prefix]
    positions = list(dict.fromkeys(frame["position"].astype(str)))
    if all(p.lstrip("-").isdigit() for p in positions):
        positions = sorted(positions, key=int)
    table = frame.pivot_table(index="label", columns=frame["position"].astype(str), values="score", aggfunc="first")
    table = table.reindex(index=_label_order(frame), columns=positions)
    if top_k is not None and len(table) > top_k:
        keep = table.abs().max(axis=1).sort_values(ascending=False).index[:top_k]
        table = table.loc[[lab for lab in table.index if lab in set(keep)]]
    z = table.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=table.index.tolist(), colorscale="RdBu", reversescale=True, zmid=0,
        zmin=-bound, zmax=bound, colorbar={"title": prefix},
        hovertemplate="head %{y} at %{x}<br>" + prefix + " = %{z:.4g}<extra></extra>",
    ))
    model = frame["model"].iloc[0] if "model" in frame else ""
    task = frame["task"].iloc[0] if "task" in frame else ""
    fig.update_layout(
        title=title or f"per-position {prefix}: {model} on {task}",
        xaxis={"title": "position", "type": "category"},
        yaxis={"title": "head", "type": "category", "autorange": "reversed"},
        template="plotly_white", height=max(360, 20 * len(table) + 180),
    )
    return fig


def path_frame(results: Mapping[str, Any] | Any, metric: str = "path_patch") -> pd.DataFrame:
    """Tidy sender -> receiver frame from path-patching results.

    Args:
        results: ``{receiver name: HeadScores}`` (one path_patching run per receiver set), or
            a frame that already has a ``receiver`` column.

    Returns:
        DataFrame ``sender, sender_layer, sender_head, receiver, score`` (NaN senders dropped).
    """
    if isinstance(results, Mapping):
        parts = []
        for receiver, scores in results.items():
            part = pd.DataFrame(scores)
            part = part[part["metric"] == metric].copy()
            part["receiver"] = str(receiver)
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = pd.DataFrame(results)
        if "receiver" not in frame.columns:
            raise HeadscopeError("path frame needs a receiver column, or pass {receiver: HeadScores}.")
        frame = frame[frame["metric"] == metric] if "metric" in frame else frame
    frame = frame.dropna(subset=["score"])
    return pd.DataFrame({"sender": frame["label"], "sender_layer": frame["layer"], "sender_head": frame["head"],
                         "receiver": frame["receiver"], "score": frame["score"]}).reset_index(drop=True)


def sender_receiver_matrix(paths: pd.DataFrame | Mapping[str, Any], top_k: int | None = 20,
                           title: str | None = None) -> Any:
    """Path-patching sender (rows) x receiver (columns) matrix.

    Args:
        paths: a :func:`path_frame` (or the mapping it takes).
        top_k: keep the senders with the largest absolute effect on any receiver.

    Returns:
        ``plotly.graph_objects.Figure``; ``score`` is ``(patched - clean) / (clean - corrupted)``:
        about -1 when the path carries the whole effect.
    """
    import plotly.graph_objects as go

    frame = paths if isinstance(paths, pd.DataFrame) else path_frame(paths)
    if frame.empty:
        raise HeadscopeError("no path-patching scores to draw.")
    table = frame.pivot_table(index="sender", columns="receiver", values="score", aggfunc="first")
    order = frame.drop_duplicates("sender").sort_values(["sender_layer", "sender_head"])["sender"].tolist()
    table = table.reindex(index=order, columns=list(dict.fromkeys(frame["receiver"])))
    if top_k is not None and len(table) > top_k:
        keep = set(table.abs().max(axis=1).sort_values(ascending=False).index[:top_k])
        table = table.loc[[s for s in table.index if s in keep]]
    z = table.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=table.columns.tolist(), y=table.index.tolist(), colorscale="RdBu", reversescale=True,
        zmid=0, zmin=-bound, zmax=bound, colorbar={"title": "path_patch"},
        hovertemplate="sender %{y} → receiver %{x}<br>path_patch = %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(title=title or "path patching: sender → receiver",
                      xaxis={"title": "receiver", "type": "category"},
                      yaxis={"title": "sender head", "type": "category", "autorange": "reversed"},
                      template="plotly_white", height=max(360, 20 * len(table) + 180))
    return fig


def circuit_graph(classes: Mapping[str, str] | pd.DataFrame, edges: pd.DataFrame | None = None,
                  edge_threshold: float = 0.05, title: str | None = None) -> Any:
    """A circuit graph: heads as nodes at (layer, position within layer), coloured by class.

    Args:
        classes: ``{"L.H": class}`` or a frame with ``label`` and ``head_class`` columns (e.g. the
            recipe runner's ``classify`` step); heads with an empty class are left out.
        edges: frame ``sender, receiver, score`` (a :func:`path_frame`); a receiver may be a
            head label, a comma-separated head list with a ``:q``/``:k``/``:v`` suffix (one edge
            per head) or ``resid``/``logits`` (drawn as a "logits" node).
        edge_threshold: draw edges with ``|score|`` at least this.

    Returns:
        ``plotly.graph_objects.Figure``: edge width and hover show the path-patching score.
    """
    import plotly.graph_objects as go

    if isinstance(classes, pd.DataFrame):
        cls = {str(r.label): str(r.head_class) for r in classes.itertuples() if str(getattr(r, "head_class", "") or "")}
    else:
        cls = {str(k): str(v) for k, v in classes.items() if v}
    if not cls:
        raise HeadscopeError("no classified heads to draw: lower the thresholds of the classify step.")
    nodes = sorted(cls, key=lambda s: tuple(int(x) for x in s.split(".")))
    order = list(dict.fromkeys(cls[n] for n in nodes))  # classes in order of first (lowest) layer
    groups: dict[tuple[int, str], list[str]] = {}
    for n in nodes:
        groups.setdefault((int(n.split(".")[0]), cls[n]), []).append(n)
    # one row per class, x = layer; heads sharing a layer and class fan out vertically
    pos = {n: (layer, order.index(name) + 0.3 * (i - (len(group) - 1) / 2))
           for (layer, name), group in groups.items() for i, n in enumerate(group)}
    last = max(layer for layer, _ in groups) + 1
    pos["logits"] = (last, (len(order) - 1) / 2)
    fig = go.Figure()
    drawn = 0
    if edges is not None and len(edges):
        for r in edges.itertuples():
            if not np.isfinite(r.score) or abs(r.score) < edge_threshold or str(r.sender) not in pos:
                continue
            rec = str(r.receiver)
            targets = ["logits"] if rec in ("resid", "resid_final", "logits") else [
                t for t in rec.split(":")[0].split(",") if t in pos]
            for t in targets:
                (x0, y0), (x1, y1) = pos[str(r.sender)], pos[t]
                fig.add_trace(go.Scatter(
                    x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
                    line={"width": 1 + 6 * min(1.0, abs(r.score)), "color": "rgba(120,120,120,0.55)"},
                    text=f"{r.sender} → {t}{(' (' + rec.split(':')[1] + ')') if ':' in rec else ''}: {r.score:.3f}",
                ))
                drawn += 1
    for i, name in enumerate(order):
        members = [n for n in nodes if cls[n] == name]
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in members], y=[pos[n][1] for n in members], mode="markers+text",
            text=members, name=name,
            textposition=["middle right" if len(groups[(int(n.split(".")[0]), name)]) > 1 else "top center"
                          for n in members],
            marker={"size": 18, "color": CLASS_COLOURS[i % len(CLASS_COLOURS)], "line": {"width": 1, "color": "#333"}},
            hovertemplate="head %{text}<br>" + name + "<extra></extra>",
        ))
    if drawn and any(str(r).split(":")[0] in ("resid", "resid_final", "logits") for r in edges["receiver"]):
        fig.add_trace(go.Scatter(x=[last], y=[pos["logits"][1]], mode="markers+text", text=["logits"], name="logits",
                                 textposition="top center", marker={"size": 22, "symbol": "square", "color": "#444"}))
    fig.update_layout(title=title or "circuit: heads by class, edges from path patching",
                      xaxis={"title": "layer", "dtick": 1, "range": [min(x for x, _ in pos.values()) - 1, last + 1]},
                      yaxis={"visible": False, "range": [-0.8, len(order) - 0.2]},
                      template="plotly_white", height=max(380, 110 * len(order) + 160))
    return fig
