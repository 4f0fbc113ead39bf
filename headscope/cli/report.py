"""``headscope report RESULTS... --out report.html``: one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from headscope.cli.options import ORDER_HELP


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the CLI app."""

    @app.command()
    def report(
        results: list[Path] = typer.Argument(..., help="results .parquet files, directories or globs"),
        out: Path = typer.Option(Path("report.html"), "--out", help="the HTML page to write"),
        title: str | None = typer.Option(None, "--title", help="page title"),
        top: int = typer.Option(10, "--top", min=1, help="heads listed per metric"),
        order: str | None = typer.Option(None, "--order", help=ORDER_HELP),
    ) -> None:
        """Build one self-contained HTML report (provenance, top heads, figures) from RESULTS.

        A directory contributes every *.parquet file below it, each file as its own section with its
        own ranking and provenance (runs are never merged).
        """
        from headscope.cli.display import console
        from headscope.cli.options import check_order_option
        from headscope.cli.paths import check_output
        from headscope.errors import HeadscopeError
        from headscope.report import build_report
        from headscope.report.runs import expand

        order = check_order_option(order)
        files = expand(results)
        if not files:
            raise HeadscopeError(f"no results files in {', '.join(map(str, results))}: give .parquet files or a directory holding them.")
        out = check_output(out, ".html", "--out")
        path = build_report(files, out, title=title, top_k=top, order=order)
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(files)} result(s))")
