"""``headscope report RESULTS... --out report.html``: one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the CLI app."""

    @app.command()
    def report(
        results: list[Path] = typer.Argument(..., help="one or more results .parquet files"),
        out: Path = typer.Option(Path("report.html"), "--out", help="the HTML page to write"),
        title: str | None = typer.Option(None, "--title", help="page title"),
        top: int = typer.Option(10, "--top", help="heads listed per metric"),
    ) -> None:
        """Build one self-contained HTML report (provenance, top heads, figures) from RESULTS."""
        from headscope.cli.app import _check_output
        from headscope.cli.display import console
        from headscope.report import build_report

        out = _check_output(out, ".html", "--out")
        path = build_report(results, out, title=title, top_k=top)
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(results)} result(s))")
