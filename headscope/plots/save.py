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
