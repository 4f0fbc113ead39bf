"""``headscope circuit``: edge scores of a model on a contrastive task, saved as EdgeScores Parquet.

    headscope circuit --model toy-induction --task induction_contrast --method eap_ig -o steps=5
    headscope circuit evaluate edges.parquet --task induction_contrast -o ablation=mean

``-o KEY=VALUE`` goes to the task if it has that parameter, otherwise to the method (typed by
its annotations). Mistakes get one line and exit 2, like every other command.

Splitting (``exact`` only; docs/scaling.md): ``--shard I/N`` writes one part file
(``<out>.shard-000I-of-000N.parquet``, merged by ``headscope merge``); under torchrun (``RANK`` /
``WORLD_SIZE`` set) every rank runs one shard and rank 0 writes the merged file.

``circuit`` is a command group whose callback runs the method when no subcommand is given, so
``headscope circuit --model ... --method ...`` works as before; ``evaluate``
(:mod:`headscope.cli.circuit_evaluate`) is its subcommand.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``circuit`` command group (the method run, and ``evaluate``) to the CLI app."""
    from headscope.cli.circuit_evaluate import register as register_evaluate

    group = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False,
                        pretty_exceptions_enable=False)
    register_evaluate(group)
    app.add_typer(group, name="circuit")

    @group.callback()
    def circuit(
        ctx: typer.Context,
        model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
        task: str = typer.Option("ioi", "--task", "-t", help="a contrastive task (see `headscope tasks`)"),
        method: str = typer.Option("eap_ig", "--method", help="eap, eap_ig, exact, verified, routes, composition, composition_svd"),
        out: Path | None = typer.Option(None, "--out", help="Parquet output (default results/<model>_<task>_circuit_<method>.parquet)"),
        plot: Path | None = typer.Option(None, "--plot", help="write the circuit graph (.html)"),
        seed: int | None = typer.Option(None, "--seed", help="random seed for the task"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, mps or auto"),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
        option: list[str] | None = typer.Option(None, "--option", "-o", help="task or method option KEY=VALUE (repeatable)"),
        top: int = typer.Option(10, "--top", min=1, help="edges to print"),
        shard: str | None = typer.Option(None, "--shard", help="I/N: run shard I (0-based) of N and write its part file "
                                         "(method exact; merge with `headscope merge`)"),
    ) -> None:
        """Score every edge of MODEL on TASK with a circuit METHOD and save tidy EdgeScores
        (`headscope circuit evaluate --help`: evaluate a saved circuit).

        Under torchrun (RANK/WORLD_SIZE set) the exact method splits its receiver blocks over the
        ranks and rank 0 writes the merged file; --shard I/N runs one part without a launcher.
        """
        if ctx.invoked_subcommand is not None:
            from headscope.errors import HeadscopeError

            given = [f"--{name.replace('_', '-')}" for name in ctx.params
                     if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
            if given:
                raise HeadscopeError(f"{', '.join(given)} before '{ctx.invoked_subcommand}' belong to the method run: "
                                     f"put them after it (headscope circuit {ctx.invoked_subcommand} FILE {given[0]} ...).")
            return
        from headscope.cli.display import console, load_with_status
        from headscope.cli.options import check_device, parse_options
        from headscope.cli.paths import check_output, slug
        from headscope.cli.sharding import plan_shards
        from headscope.plan import plan as plan_call
        from headscope.plan import run

        check_device(device)
        shards = plan_shards(shard, plot=plot)
        device = shards.device(device)
        call = plan_call(method, task, parse_options(option), kind="edges", text=True, seed=seed)
        out = check_output(out or Path("results") / f"{slug(model)}_{task}_circuit_{method}.parquet", ".parquet", "--out")
        shards.check(call.method)
        if plot is not None:
            plot = check_output(plot, ".html", "--plot")

        def load() -> object:
            return load_with_status(model, shards.prefix, device=device, dtype=dtype)

        t1 = time.perf_counter()
        scores = run(call, load, shards.backend)
        if scores is None:  # a rank other than 0: rank 0 writes the merged result
            return
        unit = "rows" if {"position", "via", "component"} & set(scores.columns) else "edges"  # per-position / token-level / SVD tables
        console.print(f"{shards.prefix}[bold]{method}[/] on [bold]{task}[/]: {len(scores)} {unit}, "
                      f"{int(scores['circuit'].sum())} in the circuit, in {time.perf_counter() - t1:.1f} s")
        out = shards.output(out)
        if note := shards.note(scores):
            console.print(note)
        console.print(edge_table(shards.shown(scores), top))
        scores.to_parquet(out)
        console.print(f"wrote {out}")
        if plot is not None:
            from headscope.plots.circuit import edge_circuit_graph
            from headscope.plots.save import save_html

            save_html(edge_circuit_graph(scores), plot)
            console.print(f"wrote {plot}")


def edge_label(row) -> str:  # noqa: ANN001 - an EdgeScores row (itertuples)
    """``sender -> receiver<input>``, with ``@p`` for per-position rows (column ``position``) and
    ``#c<i>`` for SVD component rows (column ``component``)."""
    via = getattr(row, "via", None)
    if via is not None:  # token-level routes: nodes at positions, the component in between
        return f"p{row.prompt}: {row.sender}[{row.source_position}] -{via}-> {row.receiver}[{row.position}]"
    label = f"{row.sender} -> {row.receiver}<{row.receiver_input}>"
    component = getattr(row, "component", None)
    if component is not None and component == component:
        label = f"{label} #c{int(component)}"
    position = getattr(row, "position", None)
    return label if position is None or position != position else f"{label} @{int(position)}"


def edge_table(scores, k: int):  # noqa: ANN001, ANN201 - EdgeScores -> rich Table
    """The ``k`` rows (edges, or (edge, position) pairs) with the largest |score|."""
    from rich.table import Table

    table = Table(title="top edges")
    extra = [c for c in ("exact",) if c in scores.columns]
    for col in ("rank", "edge", "score", *extra, "circuit"):
        table.add_column(col, justify="left" if col == "edge" else "right")
    for rank, row in enumerate(scores.top(k).itertuples(), start=1):
        vals = [f"{getattr(row, c):.4f}" for c in extra]
        table.add_row(str(rank), edge_label(row), f"{row.score:.4f}", *vals, "yes" if row.circuit else "")
    return table
