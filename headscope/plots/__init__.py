"""Interactive plotly figures. Every figure is a function of a HeadScores (or a tidy frame)
plus options and returns a ``plotly.graph_objects.Figure`` (inline in Jupyter; ``save_html``
writes a self-contained page).

- :func:`head_heatmap`, :func:`facet_heatmaps`: layer x head heatmaps (hover: value + metadata).
- :func:`attention_viewer` (data: :func:`attention_frame`): patterns with a head selector.
- :func:`position_patching_heatmap`, :func:`sender_receiver_matrix`, :func:`circuit_graph`.
- :func:`lens_top_tokens` (data: :func:`head_token_frame`): promoted / suppressed tokens.
- :func:`rank_comparison`: two results' scores against each other (``headscope compare``).
"""

from headscope.plots.attention import attention_frame, attention_viewer
from headscope.plots.compare import rank_comparison
from headscope.plots.facets import facet_heatmaps
from headscope.plots.heatmap import head_heatmap
from headscope.plots.lens import head_token_frame, lens_top_tokens
from headscope.plots.patching import (
    circuit_graph,
    path_frame,
    position_patching_heatmap,
    sender_receiver_matrix,
)
from headscope.plots.save import figure_div, save_html

__all__ = [
    "attention_frame",
    "attention_viewer",
    "circuit_graph",
    "facet_heatmaps",
    "figure_div",
    "head_heatmap",
    "head_token_frame",
    "lens_top_tokens",
    "path_frame",
    "position_patching_heatmap",
    "rank_comparison",
    "save_html",
    "sender_receiver_matrix",
]
