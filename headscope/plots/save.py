"""Save figures as self-contained HTML (plotly.js inlined), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headscope.results.atomic import atomic_write


def save_html(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as one self-contained HTML file (works offline)."""
    target = Path(path).expanduser()
    with atomic_write(target, suffix=".html") as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return target


def figure_div(fig: Any, div_id: str | None = None) -> str:
    """A figure as an HTML ``<div>`` + script *without* plotly.js (for pages that inline it once)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"responsive": True, "displaylogo": False})
