"""Lens views: the tokens each head's output promotes and suppresses.

:func:`head_token_frame` computes a head's direct effect on the vocabulary at one position (its
output ``z_h @ W_O[h]``, times the final norm's weight, read by ``W_U``: a per-head logit lens,
as in Elhage et al. 2021 and Sakarvadia et al. 2023's attention lens without a trained
probe); :func:`lens_top_tokens` draws any tidy frame of ``label, token, value`` rows (e.g. from
a ``logit_lens`` / ``trained_lens`` analyzer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from headscope.errors import HeadscopeError

Head = tuple[int, int]


def head_token_frame(model: Any, text: str, heads: Sequence[Head] | str, position: int = -1,
                     k: int = 10, prepend_bos: bool | None = None) -> pd.DataFrame:
    """Top ``k`` promoted and ``k`` suppressed tokens of each head's output at ``position``.

    ``value = (write_h[pos] * w_norm) @ W_U`` (d_vocab,), mean-centred over the vocabulary, where
    ``write_h = z_h @ W_O[h]`` (through the post-attention norm on Gemma-2/3 and OLMo-2) and
    ``w_norm`` is the final norm's real weight (the write is mean-centred first under LayerNorm).
    Convention: the final norm's *scale* (one positive number per position, shared by every
    token and head) is left out, so the ranking is exact and values are in logit units up to
    that factor; ``b_O`` and the norm bias are not attributed to heads.

    Returns:
        DataFrame ``layer, head, label, position, token, token_id, value, direction`` with
        ``direction`` in {``promoted``, ``suppressed``}, ``k`` rows each per head.
    """
    import torch

    from headscope.lens.core import head_vectors, unembed
    from headscope.models.norms import final_norm

    chosen = model.parse_heads(heads) if isinstance(heads, str) else [tuple(map(int, h)) for h in heads]
    for layer, head in chosen:
        model.check_head(layer, head)
    tokens = model.to_tokens(text, prepend_bos=prepend_bos)[:1]
    pos = position if position >= 0 else tokens.shape[1] + position
    writes, _ = head_vectors(model, tokens, chosen, torch.tensor([pos]))  # (1, 1, n_heads, d_model)
    w_u, spec = unembed(model), final_norm(model)
    rows = []
    with torch.inference_mode():
        for i, (layer, head) in enumerate(chosen):
            logits = spec.centre(writes[0, 0, i]) @ w_u
            logits = logits - logits.mean()
            for direction, vals in (("promoted", logits.topk(k)), ("suppressed", (-logits).topk(k))):
                for value, tid in zip(vals.values.tolist(), vals.indices.tolist(), strict=True):
                    rows.append({"layer": layer, "head": head, "label": f"{layer}.{head}", "position": pos,
                                 "token": model.tokenizer.decode([tid]), "token_id": tid,
                                 "value": value if direction == "promoted" else -value, "direction": direction})
    frame = pd.DataFrame(rows)
    frame.attrs["model"] = model.spec
    frame.attrs["prompt"] = text
    return frame


def lens_top_tokens(frame: pd.DataFrame, k: int = 10, title: str | None = None) -> Any:
    """Horizontal bars of each head's top promoted (right) and suppressed (left) tokens.

    A dropdown picks the head. ``frame`` needs ``label, token, value`` (``direction`` optional:
    else the ``k`` largest and ``k`` smallest values of each head are shown).

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    need = {"label", "token", "value"}
    if not need <= set(frame.columns):
        raise HeadscopeError(f"lens frame lacks columns {sorted(need - set(frame.columns))}.")
    heads = list(dict.fromkeys(frame["label"]))
    fig = go.Figure()
    ticks: list[list[str]] = []
    for i, label in enumerate(heads):
        part = frame[frame["label"] == label]
        bottom = part.nsmallest(k, "value").sort_values("value")
        top = part.nlargest(k, "value").sort_values("value")
        names = [repr(str(t))[1:-1] for t in [*bottom["token"], *top["token"]]]
        ticks.append(names)
        offset = 0
        for name, rows, colour in (("suppressed", bottom, "#b2182b"), ("promoted", top, "#2166ac")):
            ys = list(range(offset, offset + len(rows)))
            offset += len(rows)
            fig.add_trace(go.Bar(
                x=rows["value"].tolist(), y=ys, orientation="h", customdata=names[ys[0]:ys[-1] + 1] if ys else [],
                name=name, marker_color=colour, visible=i == 0, showlegend=i == 0, legendgroup=name,
                hovertemplate=f"head {label}<br>%{{customdata}}: %{{x:.4g}}<extra>{name}</extra>",
            ))

    def axis(i: int) -> dict[str, Any]:
        return {"tickmode": "array", "tickvals": list(range(len(ticks[i]))), "ticktext": ticks[i], "automargin": True}

    buttons = [{"label": label, "method": "update",
                "args": [{"visible": [j // 2 == i for j in range(2 * len(heads))],
                          "showlegend": [j // 2 == i for j in range(2 * len(heads))]},
                         {"title": f"tokens promoted / suppressed by head {label}", "yaxis": axis(i)}]}
               for i, label in enumerate(heads)]
    fig.update_layout(
        title=title or f"tokens promoted / suppressed by head {heads[0]}",
        xaxis={"title": "direct logit effect (frozen final-norm scale)"},
        yaxis=axis(0),
        template="plotly_white", height=max(420, 34 * k + 160), barmode="overlay",
        updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.15, "xanchor": "right", "direction": "down"}],
    )
    return fig
