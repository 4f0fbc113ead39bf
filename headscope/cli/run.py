"""``headscope run recipes/NAME.yaml [--model M]``: execute a recipe, resumably."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to the CLI app."""

    @app.command()
    def run(
        recipe: Path = typer.Argument(..., help="a recipe file (recipes/*.yaml or .toml)"),
        model: str | None = typer.Option(None, "--model", "-m", help="override the recipe's model (e.g. smollm2-135m offline)"),
        out_dir: Path | None = typer.Option(None, "--out-dir", help="output directory (default results/<recipe>/<model>)"),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N, mps or auto (default: the recipe's)"),
        dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: the recipe's)"),
        device_map: str | None = typer.Option(None, "--device-map", help="accelerate placement, e.g. auto: shard over GPUs"),
        quick: bool = typer.Option(False, "--quick", help="smoke-test sizes (each step's quick: settings)"),
        force: bool = typer.Option(False, "--force", help="rerun steps even when their output is up to date"),
        no_report: bool = typer.Option(False, "--no-report", help="skip the HTML report"),
    ) -> None:
        """Run RECIPE: every step writes Parquet (skipped when up to date), then a report."""
        from headscope.cli.display import console
        from headscope.cli.options import check_device
        from headscope.recipes_runner import load_recipe, run_recipe

        spec = load_recipe(recipe)
        check_device(device or spec.device, "--device" if device else f"the recipe's device ({recipe})")
        console.print(f"[bold]{spec.title}[/]" + (f" ({spec.paper})" if spec.paper else ""))
        result = run_recipe(spec, model=model, device=device, dtype=dtype, device_map=device_map, quick=quick,
                            out_dir=out_dir, force=force, report=not no_report, log=console.print)
        console.print(f"done: {len(result.ran)} step(s) ran, {len(result.skipped)} up to date; outputs in {result.out_dir}")
