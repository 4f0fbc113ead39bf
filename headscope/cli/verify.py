"""``headscope verify``: conformance checks of headscope on the user's own model.

    headscope verify --model smollm2-135m [--prompts 3] [--seed 0] [--out report.json]

Prints one row per check (capability, check, max |diff|, tolerance, PASS / FAIL / REFUSED /
NOT CHECKED with the reason) and exits 0 when nothing failed, 1 on any FAIL, 2 on bad usage
(see :mod:`headscope.verify`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

STYLE = {"PASS": "green", "FAIL": "bold red", "REFUSED": "yellow", "NOT CHECKED": "dim"}


def _num(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2e}"


def verify_table(report: Any) -> tuple[Any, list[str]]:
    """A rich table of the report's rows, and the numbered reasons printed below it.

    Reasons (refusals, what was not checked, notes) are footnotes so each stays on one line.
    """
    from rich.table import Table

    table = Table(title=f"headscope verify: {report.model.get('model_id', '')}")
    for col in ("capability", "check", "max |diff|", "tolerance", "result"):
        table.add_column(col, justify="right" if col in ("max |diff|", "tolerance") else "left",
                         overflow="fold", no_wrap=col != "check")
    notes: list[str] = []
    last = None
    for row in report.rows:
        status = f"[{STYLE.get(row.status, '')}]{row.status}[/]"
        if row.reason:
            notes.append(row.reason)
            status += f" [{len(notes)}]"
        table.add_row("" if row.capability == last else row.capability, row.check, _num(row.max_diff),
                      _num(row.tolerance), status)
        last = row.capability
    return table, [f"[{i}] {text}" for i, text in enumerate(notes, start=1)]


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the CLI app."""

    @app.command()
    def verify(
        model: str = typer.Option(..., "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
        prompts: int = typer.Option(3, "--prompts", help="number of seeded random prompt pairs"),
        seed: int = typer.Option(0, "--seed", help="seed of the prompts and of the sampled heads"),
        out: Path | None = typer.Option(None, "--out", help="also write the report as JSON (.json)"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, mps or auto"),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
    ) -> None:
        """Check headscope against an independent raw Hugging Face copy of MODEL (exit 1 on any FAIL)."""

        from headscope.cli.display import console, load_with_status
        from headscope.cli.paths import check_output
        from headscope.errors import HeadscopeError
        from headscope.results import atomic_write
        from headscope.verify import verify_model

        if prompts < 1:
            raise HeadscopeError(f"--prompts must be at least 1; got {prompts}.")
        if out is not None:
            out = check_output(out, ".json", "--out")
        loaded = load_with_status(model, device=device, dtype=dtype)
        with console.status("verifying ...", spinner="dots") as status:
            report = verify_model(
                loaded, prompts=prompts, seed=seed,
                on_check=lambda spec: status.update(f"verify: {spec.capability}: {spec.name}"),
            )
        table, notes = verify_table(report)
        console.print(table)
        for note in notes:
            console.print(note, soft_wrap=True, highlight=False, markup=False)
        counts = report.to_dict()["counts"]
        console.print(
            ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" in {report.seconds:.1f} s "
            f"({report.settings.get('prompts')} prompts of {report.settings.get('prompt_length')} tokens, "
            f"heads {','.join(report.settings.get('heads', []))})"
        )
        if out is not None:
            with atomic_write(out, suffix=".json") as tmp:
                tmp.write_text(report.to_json())
            console.print(f"wrote {out}")
        if report.failed:
            raise typer.Exit(1)
