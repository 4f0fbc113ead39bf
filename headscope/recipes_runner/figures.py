"""The extra report figures a recipe asks for (``figures:``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from headscope.recipes_runner.runner import resolve
from headscope.recipes_runner.spec import Recipe
from headscope.results import HeadScores


def receiver_name(scores: HeadScores, step_id: str) -> str:
    """The receivers of a path-patching result (``resid_final`` or ``9.6,9.9:q``)."""
    return str(scores.provenance.get("choices", {}).get("receivers") or step_id)


def recipe_figures(recipe: Recipe, results: dict[str, HeadScores], get_model: Callable[[], Any],
                   edges: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """Build the recipe's figures; ``get_model`` loads the model only if a figure needs it.
    ``edges``: circuit steps' EdgeScores (figure kind ``edges``: their circuit graph)."""
    from headscope import plots

    figs: list[tuple[str, Any]] = []
    for fig in recipe.figures:
        kind = fig["kind"]
        if kind == "edges":
            from headscope.plots.circuit import edge_circuit_graph

            for sid in fig.get("steps", []):
                figs.append((f"edge circuit: {sid}", edge_circuit_graph((edges or {})[sid])))
        elif kind == "sender_receiver":
            paths = plots.path_frame({receiver_name(results[s], s): results[s] for s in fig["steps"]})
            figs.append(("path patching: sender → receiver", plots.sender_receiver_matrix(paths, top_k=fig.get("top_k", 20))))
        elif kind == "circuit":
            classes = pd.DataFrame(results[fig["classes"]])
            edges = plots.path_frame({receiver_name(results[s], s): results[s] for s in fig.get("edges", [])}) \
                if fig.get("edges") else None
            figs.append(("circuit graph", plots.circuit_graph(classes, edges, edge_threshold=float(fig.get("edge_threshold", 0.05)))))
        elif kind == "attention":
            heads = resolve(fig["heads"], results)
            frame = plots.attention_frame(get_model(), fig["prompt"], heads)
            figs.append((f"attention patterns of {heads}", plots.attention_viewer(frame)))
        elif kind == "lens":
            heads = resolve(fig["heads"], results)
            frame = plots.head_token_frame(get_model(), fig["prompt"], heads, position=int(fig.get("position", -1)),
                                           k=int(fig.get("k", 10)))
            figs.append((f"tokens promoted / suppressed by {heads}", plots.lens_top_tokens(frame, k=int(fig.get("k", 10)))))
        elif kind == "heatmap":
            for s in fig.get("steps", []):
                figs.append((f"{s}", plots.facet_heatmaps(results[s], metrics=fig.get("metrics"))))
    return figs
