"""``headscope ablate``: ablate heads on a contrastive task and report the metric before/after.

    headscope ablate --model smollm2-135m --task ioi --heads 23.3,23.0 --kind mean

Kinds: ``zero``, ``mean`` (over the reference prompts; ``--per-template`` for one mean per
task group/template, ``--per-position`` per position), ``resample`` (row-wise from the
corrupted prompts), ``query_mask`` (uniform attention; ``--scale``). ``--reference`` picks the
mean's reference distribution (``corrupted``, the default, or ``clean``). ``--position``
restricts the ablation to one named position (e.g. ``S2``, ``END``).
"""

from __future__ import annotations

from typing import Any

import typer

from headscope.errors import HeadscopeError


def ablation_effect(
    model: Any,
    batch: Any,
    heads: list[tuple[int, int]],
    kind: str,
    reference: str = "corrupted",
    per_template: bool = False,
    per_position: bool = False,
    position: str | None = None,
    scale: float = 0.0,
) -> dict[str, Any]:
    """Metric (logit difference at END, clean prompts) before and after the ablation."""
    import torch

    from headscope.interventions import make_ablation, run_with_interventions
    from headscope.interventions.group_mean import GroupMeanAblate

    ref = batch.corrupted if reference == "corrupted" else batch.clean
    if reference not in ("corrupted", "clean"):
        raise HeadscopeError(f"--reference must be corrupted or clean; got '{reference}'.")
    positions = None
    if position is not None:
        if position not in batch.positions:
            raise HeadscopeError(f"unknown position '{position}': the task has {', '.join(batch.positions)}.")
        positions = batch.positions[position].unsqueeze(1)
    if per_template and kind != "mean":
        raise HeadscopeError("--per-template applies to --kind mean only.")
    if kind == "mean" and per_template:
        iv = GroupMeanAblate(heads, positions, reference=ref, groups=batch.groups, per_position=per_position)
    else:
        iv = make_ablation(kind, heads, reference=ref if kind != "resample" else batch.corrupted,
                           positions=positions, scale=scale, per_position=per_position)
    before = batch.logit_diff(run_with_interventions(model, batch.clean, [], positions=batch.end))
    after = batch.logit_diff(run_with_interventions(model, batch.clean, [iv], positions=batch.end))
    return {
        "before": float(before.mean()),
        "after": float(after.mean()),
        "change": float((after - before).mean()),
        "fraction_correct_before": float((before > 0).float().mean()),
        "fraction_correct_after": float((after > 0).float().mean()),
        "per_row_before": before,
        "per_row_after": after,
        "intervention": iv.describe(),
        "n": int(torch.numel(before)),
    }


def register(app: typer.Typer) -> None:
    """Add the ``ablate`` command to the CLI app."""

    @app.command()
    def ablate(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
        task: str = typer.Option("ioi", "--task", "-t", help="contrastive task (ioi, facts, induction_contrast, user_file)"),
        heads: str = typer.Option(..., "--heads", help="heads as LAYER.HEAD, e.g. 9.6,10.0"),
        kind: str = typer.Option("mean", "--kind", help="zero, mean, resample or query_mask"),
        reference: str = typer.Option("corrupted", "--reference", help="mean reference: corrupted or clean prompts"),
        per_template: bool = typer.Option(False, "--per-template", help="one mean per task template/group"),
        per_position: bool = typer.Option(False, "--per-position", help="one mean per position"),
        position: str | None = typer.Option(None, "--position", help="ablate only at this named position (e.g. S2)"),
        scale: float = typer.Option(0.0, "--scale", help="query_mask scale (0: uniform attention)"),
        seed: int | None = typer.Option(None, "--seed", help="task seed"),
        device: str = typer.Option("cpu", "--device"),
        dtype: str = typer.Option("float32", "--dtype"),
        option: list[str] | None = typer.Option(None, "--option", "-o", help="task option KEY=VALUE (repeatable)"),
    ) -> None:
        """Ablate HEADS on TASK and print the metric before and after."""
        from headscope.cli.display import console
        from headscope.cli.options import check_device, parse_options
        from headscope.heads_text import parse_head_list
        from headscope.interventions import ABLATION_KINDS
        from headscope.models import load_model
        from headscope.plan import plan_task
        from headscope.tasks.protocols import ContrastiveTask

        if kind not in ABLATION_KINDS:
            from headscope.errors import suggest

            raise HeadscopeError(f"unknown ablation kind '{kind}'.{suggest(kind, ABLATION_KINDS)} Kinds: {', '.join(ABLATION_KINDS)}.")
        parse_head_list(heads)  # syntax, before the model loads
        check_device(device)
        task_obj = plan_task(task, parse_options(option), requires=ContrastiveTask, text=True, seed=seed,
                             what="`headscope ablate`")
        loaded = load_model(model, device=device, dtype=dtype)
        batch = task_obj.batch(loaded)
        out = ablation_effect(loaded, batch, loaded.parse_heads(heads), kind, reference, per_template,
                              per_position, position, scale)
        console.print(f"[bold]{task}[/] on {loaded.model_id}: {out['n']} clean prompts, metric = logit diff at END")
        console.print(f"ablation: {kind} of {heads}" + (f" at {position}" if position else "") +
                      (" (per template)" if per_template else ""))
        console.print(f"before: {out['before']:.4f}  (answer wins on {out['fraction_correct_before']:.0%})")
        console.print(f"after:  {out['after']:.4f}  (answer wins on {out['fraction_correct_after']:.0%})")
        console.print(f"change: {out['change']:+.4f}")
