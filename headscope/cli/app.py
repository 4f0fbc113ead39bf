"""``headscope`` CLI: score, show, models, tasks (and ablate, lens, report, run, compare, verify, circuit).

User errors print one line (``error: ...``) and exit 2, without a traceback. Set
``HEADSCOPE_DEBUG=1`` to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import typer

from headscope.cli.display import console, load_with_status, provenance_table, runs_table, top_table
from headscope.cli.options import ORDER_HELP, check_device, check_order_option, parse_options
from headscope.cli.paths import check_output, slug
from headscope.errors import HeadscopeError, HeadscopeWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="headscope: find, score and intervene on the attention heads of language models.",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from headscope.version import __version__

        print(f"headscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print the version and exit"),
) -> None:
    """headscope: find, score and intervene on the attention heads of language models."""


@app.command()
def score(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
    task: str = typer.Option("induction", "--task", "-t", help="task name (see `headscope tasks`)"),
    analyzer: str | None = typer.Option(None, "--analyzer", "-a", help="analyzer (default: the task's)"),
    out: Path | None = typer.Option(None, "--out", help="Parquet output (default results/<model>_<task>_<analyzer>.parquet)"),
    plot: Path | None = typer.Option(None, "--plot", help="write an interactive heatmap (.html)"),
    seed: int | None = typer.Option(None, "--seed", help="random seed for the task"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, mps or auto"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
    device_map: str | None = typer.Option(None, "--device-map", help="accelerate placement, e.g. auto: shard over GPUs"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="task or analyzer option KEY=VALUE (repeatable)"),
    top: int = typer.Option(10, "--top", min=1, help="heads to print per metric"),
    order: str | None = typer.Option(None, "--order", help=ORDER_HELP),
    export_kv_policy: Path | None = typer.Option(None, "--export-kv-policy", help="write the heads to keep with a full KV cache (.json)"),
    kv_fraction: list[str] | None = typer.Option(None, "--kv-fraction", help="METRIC=FRACTION of heads to keep for --export-kv-policy (repeatable)"),
    shard: str | None = typer.Option(None, "--shard", help="I/N: run shard I (0-based) of N and write its part file (merge with `headscope merge`)"),
) -> None:
    """Score every head of MODEL on TASK and save tidy results.

    Under torchrun (RANK/WORLD_SIZE set) a sweep analyzer splits its units over the ranks and
    rank 0 writes the merged file; --shard I/N runs one part without a launcher (docs/scaling.md).
    """
    from headscope.cli.sharding import plan_shards
    from headscope.plan import plan as plan_call
    from headscope.plan import run

    check_device(device)
    order = check_order_option(order)
    shards = plan_shards(shard, plot=plot, export_kv_policy=export_kv_policy, device_map=device_map)
    device = shards.device(device)
    call = plan_call(analyzer, task, parse_options(option), kind="heads", text=True, seed=seed)
    analyzer_name = call.method.name
    if isinstance(call.given.get("heads"), str) and call.given["heads"].strip():
        from headscope.heads_text import parse_head_list

        # syntax now; ranges once the model is loaded. trained_lens also takes a whole layer, L.*
        parse_head_list(call.given["heads"], "-o heads=", whole_layers=analyzer_name == "trained_lens")
    if "progress" in call.method.options() and "progress" not in call.given:
        call = replace(call, options={**call.options, "progress": True}, given={**call.given, "progress": True})
    out = out or Path("results") / f"{slug(model)}_{task}_{analyzer_name}.parquet"
    out = check_output(out, ".parquet", "--out")
    shards.check(call.method)
    if plot is not None:
        plot = check_output(plot, ".html", "--plot")
    if export_kv_policy is not None:
        from headscope.kv import policy as kv_policy

        export_kv_policy = check_output(export_kv_policy, ".json", "--export-kv-policy")
        fractions = kv_policy.parse_fractions(kv_fraction)

    def load() -> object:
        return load_with_status(model, shards.prefix, device=device, dtype=dtype, device_map=device_map)

    t1 = time.perf_counter()
    scores = run(call, load, shards.backend)
    if scores is None:  # a rank other than 0: rank 0 writes the merged result
        return
    console.print(f"{shards.prefix}[bold]{analyzer_name}[/] on [bold]{task}[/]: {len(scores)} rows in {time.perf_counter() - t1:.1f} s")
    out = shards.output(out)
    if note := shards.note(scores):
        console.print(note)
    console.print(top_table(shards.shown(scores), k=top, order=order))
    scores.to_parquet(out)
    console.print(f"wrote {out}")
    if export_kv_policy is not None:
        console.print(f"wrote {kv_policy.export_kv_policy(scores, export_kv_policy, fractions)}")
    if plot is not None:
        from headscope.plots import head_heatmap, save_html
        from headscope.plots.figures import all_metric_heatmaps

        save_html(all_metric_heatmaps(scores) if len(scores.metrics) > 1 else head_heatmap(scores), plot)
        console.print(f"wrote {plot}")


@app.command()
def show(
    paths: list[Path] = typer.Argument(..., help="results .parquet files, directories or globs"),
    top: int = typer.Option(10, "--top", min=1, help="heads per metric"),
    metric: str | None = typer.Option(None, "--metric", help="only this metric"),
    order: str | None = typer.Option(None, "--order", help=ORDER_HELP),
    per_run: bool = typer.Option(False, "--per-run", help="several runs: show each on its own"),
    mixed: bool = typer.Option(False, "--mixed", help="several runs: rank them together even if model, task or analyzer differ"),
) -> None:
    """Print the top heads of results, with their provenance.

    Several files (or a directory) are read one by one and their rows labelled by run. They are
    ranked together only when they share model, task and analyzer (or with --mixed).
    """
    from headscope.report.runs import expand, incompatibility, run_labels
    from headscope.results import HeadScores, read_parquet

    order = check_order_option(order)
    files = expand(paths)
    if not files:
        raise HeadscopeError(f"no results files in {', '.join(map(str, paths))}: give .parquet files or a directory holding them.")
    runs = [(label, read_parquet(f)) for f, label in zip(files, run_labels(files), strict=True)]
    if metric is not None:
        runs = [(label, s.top(len(s), metric=metric)) for label, s in runs]
    if len(runs) == 1:
        console.print(top_table(runs[0][1], k=top, order=order))
        console.print(provenance_table(runs[0][1].provenance))
        return
    if per_run:
        for label, scores in runs:
            console.print(top_table(scores, k=top, title=f"top heads: {label}", order=order))
            console.print(provenance_table(scores.provenance, title=f"provenance: {label}"))
        return
    why = incompatibility(runs)
    if why and not mixed:
        raise HeadscopeError(
            f"these {len(runs)} results come from different runs ({why}): ranking them together would mix "
            "them. Show one file, pass --per-run to show each run on its own, or --mixed to rank them together."
        )
    parts = []
    for label, scores in runs:
        frame = scores.copy()
        frame["run"] = label
        parts.append(frame)
    merged = HeadScores.concat(parts, provenance={})
    console.print(top_table(merged, k=top, title=f"top heads across {len(runs)} runs", order=order))
    console.print(runs_table(runs))


@app.command()
def models() -> None:
    """List model aliases and toy models, and whether each is available offline."""
    from rich.table import Table

    from headscope.models.load import offline_status

    table = Table(title="models")
    for col in ("name", "offline", "source", "summary"):
        table.add_column(col, overflow="fold")
    for row in offline_status():
        source = row["source"] if row["offline"] else f"{row['source']}; offline: {row['install']}"
        table.add_row(row["name"], "yes" if row["offline"] else "no", source, row["summary"])
    console.print(table)
    console.print("Any hub id (gpt2, EleutherAI/pythia-70m), model directory or .gguf file also works.")


@app.command()
def tasks() -> None:
    """List tasks, analyzers and circuit methods (one registry: headscope.methods)."""
    from rich.table import Table

    from headscope.methods import list_methods
    from headscope.tasks.registry import TASKS, load_builtin_tasks

    load_builtin_tasks()
    table = Table(title="tasks")
    for col in ("task", "default analyzer", "parameters (-o KEY=VALUE)", "summary"):
        table.add_column(col, overflow="fold")
    for info in TASKS.values():
        table.add_row(info.name, info.default_analyzer, ", ".join(info.parameters()), info.summary)
    console.print(table)
    titles = {"heads": ("analyzers", "analyzer"), "edges": ("circuit methods (headscope circuit --method NAME)", "method")}
    for kind, (title, first) in titles.items():
        table = Table(title=title)
        for col in (first, "tasks", "options (-o KEY=VALUE)", "presets (-o preset=NAME)", "summary"):
            table.add_column(col, overflow="fold")
        for m in list_methods(kind):
            presets = "; ".join(
                f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in m.presets.items()
            )
            table.add_row(m.name, ", ".join(m.tasks) or "any", ", ".join(m.options()), presets or "-", m.summary)
        console.print(table)


from headscope.cli.ablate import register as _register_ablate  # noqa: E402
from headscope.cli.circuit import register as _register_circuit  # noqa: E402
from headscope.cli.compare import register as _register_compare  # noqa: E402
from headscope.cli.lens import register as _register_lens  # noqa: E402
from headscope.cli.report import register as _register_report  # noqa: E402
from headscope.cli.run import register as _register_run  # noqa: E402
from headscope.cli.sharding import register as _register_merge  # noqa: E402
from headscope.cli.verify import register as _register_verify  # noqa: E402

_register_ablate(app)
_register_lens(app)
for _register in (_register_report, _register_run, _register_compare, _register_verify, _register_merge,
                  _register_circuit):
    _register(app)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks (temporary files) run."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _clear_nested_interrupt_flag() -> None:
    """Let a handled Ctrl-C exit with our code, not by SIGINT.

    A KeyboardInterrupt that passes through code a C extension runs with ``PyRun_*`` (some
    imports do) sets CPython's "unhandled KeyboardInterrupt" flag even though the CLI handles
    the interrupt; at exit CPython then kills the process with SIGINT (status -2) instead of
    exiting 130. Running an empty statement through the same API resets the flag.
    """
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except Exception:  # noqa: BLE001 - not CPython, or no ctypes: nothing to reset
        pass


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """headscope's own warnings as one ``warning: ...`` line; others as Python prints them."""
    if issubclass(category, HeadscopeWarning):
        return f"warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


_PYTHON_FORMAT_WARNING = warnings.formatwarning


def _flags_as_flags(command: object) -> object:
    """Boolean flags shown as flags in --help (typer prints ``--per-run <bool>`` otherwise)."""
    try:  # --help itself is made on first use, and cached on the command
        from typer._click import Context

        command.get_help_option(Context(command))  # type: ignore[attr-defined]
        helps = [command._help_option]  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - another typer
        helps = []
    for param in [*getattr(command, "params", ()), *helps]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_as_flags(sub)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and a non-zero exit.

    Exit codes: 0 success; 2 a user error (one ``error: ...`` line naming the fix); 130 Ctrl-C
    (``interrupted``); 143 SIGTERM (``terminated``); 1 an unexpected internal error.
    """
    import signal
    import threading

    import click

    try:  # typer >= 0.20 vendors its own click; its exceptions are not click's
        from typer._click import exceptions as vendored
    except ImportError:  # pragma: no cover - older typer uses click itself
        vendored = click.exceptions

    def kinds(name: str) -> tuple[type[BaseException], ...]:
        return tuple(k for k in (getattr(click.exceptions, name, None), getattr(vendored, name, None)) if k is not None)

    abort, exit_, usage = kinds("Abort"), kinds("Exit"), kinds("ClickException")

    warnings.formatwarning = _format_warning
    command = _flags_as_flags(typer.main.get_command(app))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        # typer turns KeyboardInterrupt into Exit(130) and, outside standalone mode, *returns*
        # the exit code of any Exit instead of raising it
        code = command.main(args=argv, prog_name="headscope", standalone_mode=False)
    except HeadscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except exit_ as exc:
        code = exc.exit_code
    except usage as exc:
        args = sys.argv[1:] if argv is None else list(argv)
        sub = args[0] if args and args[0] in getattr(command, "commands", {}) else ""
        print(f"error: {exc.format_message()} (see `{' '.join(['headscope', sub, '--help']).replace('  ', ' ')}`)", file=sys.stderr)
        sys.exit(exc.exit_code or 2)
    except KeyboardInterrupt:
        code = 130
    except Terminated:
        _clear_nested_interrupt_flag()
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:  # noqa: BLE001 - last line of defence against tracebacks
        if os.environ.get("HEADSCOPE_DEBUG"):
            raise
        print(
            f"error: internal error {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with HEADSCOPE_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            _clear_nested_interrupt_flag()
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
