"""Rich tables for the CLI."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def load_with_status(model: str, prefix: str = "", **kwargs: Any) -> Any:
    """:func:`headscope.load_model` under a spinner, then one line with the model and the seconds
    it took (``prefix``: a rank's ``[rank i]``)."""
    import time

    from headscope.models import load_model

    t0 = time.perf_counter()
    with console.status(f"loading {model} ...", spinner="dots"):
        loaded = load_model(model, **kwargs)
    console.print(f"{prefix}[bold]model[/] {loaded!r}  ({time.perf_counter() - t0:.1f} s)")
    return loaded


def top_table(scores: Any, k: int = 10, title: str = "top heads", order: str | None = None) -> Table:
    """A table of the top ``k`` heads for each metric (with a ``run`` column when rows carry one),
    ranked by ``order`` (:meth:`HeadScores.top`; default |score| for a signed metric); the title
    says how each metric is ranked."""
    from headscope.results.head_scores import ORDER_TITLES

    orders = {metric: scores.order_for(metric, order) for metric in scores.metrics}
    if len(set(orders.values())) == 1:
        title = f"{title} ({ORDER_TITLES[next(iter(orders.values()))]})"
    elif orders:
        title = f"{title} ({'; '.join(f'{m} {ORDER_TITLES[o]}' for m, o in orders.items())})"
    table = Table(title=title, show_lines=False)
    has_run = "run" in scores.columns
    for col in ("metric", "rank", *(("run",) if has_run else ()), "head", "score", "± stderr"):
        table.add_column(col, justify="left" if col in ("metric", "run") else "right")
    for metric in scores.metrics:
        top = scores.top(k, metric=metric, order=orders[metric])
        for rank, row in enumerate(top.itertuples(), start=1):
            stderr = getattr(row, "stderr", None)
            table.add_row(
                metric if rank == 1 else "",
                str(rank),
                *((str(row.run),) if has_run else ()),
                f"{row.layer}.{row.head}",
                f"{row.score:.4f}",
                "" if stderr is None or stderr != stderr else f"{stderr:.4f}",
            )
    return table


def provenance_table(provenance: dict[str, Any], title: str = "provenance") -> Table:
    """Provenance as a two-column table (nested values as compact JSON)."""
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(key, text)
    return table


def runs_table(runs: list[tuple[str, Any]]) -> Table:
    """One line per run: its label, model, task, analyzer, seed and time (from its provenance)."""
    table = Table(title="runs")
    for col in ("run", "model", "task", "analyzer", "seed", "time (UTC)"):
        table.add_column(col, overflow="fold")
    for label, scores in runs:
        prov = scores.provenance
        first = scores.iloc[0] if len(scores) else {}
        table.add_row(label, str(first.get("model", "")), str(first.get("task", "")), str(first.get("analyzer", "")),
                      str(prov.get("seed", "")), str(prov.get("time_utc", "")))
    return table
