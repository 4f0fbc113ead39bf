"""Interactive plotly figures. Every figure is a function of a HeadScores (plus options)."""

from headscope.plots.heatmap import head_heatmap
from headscope.plots.save import save_html

__all__ = ["head_heatmap", "save_html"]
