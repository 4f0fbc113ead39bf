"""Attention-pattern viewer: chosen heads on one prompt, with token labels, a head selector and
destination/source highlighting.

Data and drawing are separate: :func:`attention_frame` traces the heads' patterns into a tidy
frame (one row per head, destination and source position); :func:`attention_viewer` draws any
such frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from headscope.errors import HeadscopeError

Head = tuple[int, int]


def token_labels(model: Any, ids: Sequence[int]) -> list[str]:
    """Readable, unique-per-position token labels: ``"3:␣Mary"`` (spaces shown as ␣)."""
    out = []
    for i, t in enumerate(ids):
        text = model.tokenizer.decode([int(t)]).replace(" ", "␣").replace("\n", "↵")
        out.append(f"{i}:{text}")
    return out


def attention_frame(model: Any, text: str | Sequence[int], heads: Sequence[Head] | str,
                    prepend_bos: bool | None = None) -> pd.DataFrame:
    """Attention patterns of ``heads`` on one prompt as a tidy frame.

    Args:
        model: a loaded :class:`headscope.models.Model`.
        text: the prompt (or its token ids).
        heads: ``[(layer, head), ...]`` or ``"9.6,10.0"``.
        prepend_bos: as :meth:`Model.to_tokens` (default: the model's convention).

    Returns:
        DataFrame with columns ``layer, head, label, dest, src, dest_token, src_token, weight``;
        ``weight`` is the attention probability from destination (query) position ``dest`` to
        source (key) position ``src`` (rows sum to 1 over ``src <= dest``).
    """
    from headscope.trace import trace

    chosen = model.parse_heads(heads) if isinstance(heads, str) else [tuple(map(int, h)) for h in heads]
    if not chosen:
        raise HeadscopeError("choose at least one head, e.g. heads='9.6,10.0'.")
    for layer, head in chosen:
        model.check_head(layer, head)
    if isinstance(text, str):
        tokens = model.to_tokens(text, prepend_bos=prepend_bos)
    else:
        import torch

        tokens = torch.tensor([[int(t) for t in text]])
    tokens = tokens[:1]
    layers = sorted({layer for layer, _ in chosen})
    tr = trace(model, tokens, acts=("pattern",), layers=layers)
    labels = token_labels(model, tokens[0].tolist())
    n = len(labels)
    dest, src = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    parts = []
    for layer, head in chosen:
        pattern = tr.get("pattern", layer)[0, head].float().cpu().numpy()  # (dest, src)
        parts.append(pd.DataFrame({
            "layer": layer, "head": head, "label": f"{layer}.{head}",
            "dest": dest.ravel(), "src": src.ravel(),
            "dest_token": [labels[i] for i in dest.ravel()],
            "src_token": [labels[j] for j in src.ravel()],
            "weight": pattern.ravel(),
        }))
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs["model"] = model.spec
    frame.attrs["tokens"] = labels
    return frame


def attention_viewer(frame: pd.DataFrame, dest: int | None = None, title: str | None = None) -> Any:
    """Interactive attention patterns from an :func:`attention_frame`.

    Left: the selected head's (destination x source) pattern with token labels; a dropdown picks
    the head. Right: for the destination token chosen on the slider, every head's attention over
    the source tokens (source highlighting); the slider also outlines that destination row in
    the pattern (destination highlighting). Hover shows ``dest token -> src token = weight``.

    Args:
        frame: tidy frame with ``label, dest, src, dest_token, src_token, weight``.
        dest: destination position selected initially (default: the last).

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    need = {"label", "dest", "src", "dest_token", "src_token", "weight"}
    if not need <= set(frame.columns):
        raise HeadscopeError(f"attention frame lacks columns {sorted(need - set(frame.columns))}.")
    heads = list(dict.fromkeys(frame["label"]))
    n = int(frame["dest"].max()) + 1
    tokens = frame.drop_duplicates("dest").sort_values("dest")["dest_token"].tolist()
    dest = n - 1 if dest is None else int(dest)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.16,
                        subplot_titles=("pattern (rows: destination, columns: source)",
                                        "attention from the selected destination"))
    for i, label in enumerate(heads):
        part = frame[frame["label"] == label]
        z = np.full((n, n), np.nan)
        z[part["dest"].to_numpy(), part["src"].to_numpy()] = part["weight"].to_numpy()
        z[np.triu_indices(n, 1)] = np.nan  # causal: sources after the destination are not attended
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n)), y=list(range(n)), colorscale="Blues", zmin=0, zmax=1, visible=i == 0,
            name=label, colorbar={"title": "attention", "x": 0.5, "len": 0.9, "thickness": 10},
            customdata=np.array([[f"{tokens[d]} → {tokens[s]}" for s in range(n)] for d in range(n)]),
            hovertemplate=f"head {label}<br>%{{customdata}}<br>weight = %{{z:.4f}}<extra></extra>",
        ), row=1, col=1)
    n_heat = len(heads)
    for d in range(n):
        for label in heads:
            part = frame[(frame["label"] == label) & (frame["dest"] == d)].sort_values("src")
            fig.add_trace(go.Bar(
                x=part["src"].tolist(), y=part["weight"].tolist(), name=label, legendgroup=label,
                showlegend=d == dest, visible=d == dest,
                customdata=part["src_token"].tolist(),
                hovertemplate=f"head {label}<br>{tokens[d]} → %{{customdata}}<br>weight = %{{y:.4f}}<extra></extra>",
            ), row=1, col=2)
    bar_idx = list(range(n_heat, n_heat + n * len(heads)))

    def row_box(d: int) -> list[dict[str, Any]]:
        return [{"type": "rect", "xref": "x", "yref": "y", "x0": -0.5, "x1": d + 0.5, "y0": d - 0.5, "y1": d + 0.5,
                 "line": {"color": "crimson", "width": 2}}]

    buttons = [{"label": label, "method": "restyle",
                "args": [{"visible": [j == i for j in range(n_heat)]}, list(range(n_heat))]}
               for i, label in enumerate(heads)]
    steps = []
    for d in range(n):
        vis = [dd == d for dd in range(n) for _ in heads]
        legend = [dd == d for dd in range(n) for _ in heads]
        steps.append({"label": tokens[d], "method": "update",
                      "args": [{"visible": vis, "showlegend": legend}, {"shapes": row_box(d)}, bar_idx]})
    tick = {"tickmode": "array", "tickvals": list(range(n)), "ticktext": tokens, "tickfont": {"size": 9}}
    fig.update_xaxes(title_text="source token", **tick, row=1, col=1)
    fig.update_yaxes(title_text="destination token", autorange="reversed", **tick, row=1, col=1)
    fig.update_xaxes(title_text="source token", **tick, row=1, col=2)
    fig.update_yaxes(title_text="attention", range=[0, 1], row=1, col=2)
    model = frame.attrs.get("model", "")
    fig.update_layout(
        title={"text": title or f"attention patterns{(' of ' + model) if model else ''}", "y": 0.98},
        template="plotly_white", barmode="group", shapes=row_box(dest),
        height=max(480, 16 * n + 260), width=max(900, 26 * n * 2 + 300),
        updatemenus=[{"buttons": buttons, "x": 0.06, "y": 1.08, "xanchor": "left", "yanchor": "bottom",
                      "direction": "down", "showactive": True}],
        annotations=[*fig.layout.annotations, {"text": "head:", "x": 0.0, "y": 1.1, "xref": "paper", "yref": "paper",
                                               "showarrow": False, "xanchor": "left", "yanchor": "bottom"}],
        margin={"t": 130},
        sliders=[{"active": dest, "steps": steps, "currentvalue": {"prefix": "destination: "},
                  "pad": {"t": 60}, "len": 1.0}],
        legend={"x": 1.02, "y": 1.0},
    )
    return fig
