"""Rich tables for the CLI."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def top_table(scores: Any, k: int = 10) -> Table:
    """A table of the top ``k`` heads for each metric."""
    table = Table(title="top heads", show_lines=False)
    for col in ("metric", "rank", "head", "score", "± stderr"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for metric in scores.metrics:
        top = scores.top(k, metric=metric)
        for rank, row in enumerate(top.itertuples(), start=1):
            stderr = getattr(row, "stderr", None)
            table.add_row(
                metric if rank == 1 else "",
                str(rank),
                f"{row.layer}.{row.head}",
                f"{row.score:.4f}",
                "" if stderr is None or stderr != stderr else f"{stderr:.4f}",
            )
    return table


def provenance_table(provenance: dict[str, Any]) -> Table:
    """Provenance as a two-column table (nested values as compact JSON)."""
    table = Table(title="provenance", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(key, text)
    return table
