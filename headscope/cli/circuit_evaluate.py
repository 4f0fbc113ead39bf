"""``headscope circuit evaluate EDGES.parquet``: faithfulness, curve, completeness and minimality
of a saved circuit (:mod:`headscope.circuits.evaluate`), on its own task or another one.

    headscope circuit evaluate ioi_edges.parquet                       # the model and task it was found on
    headscope circuit evaluate ioi_edges.parquet --task induction_contrast -o n_prompts=8   # cross-task
    headscope circuit evaluate edges.parquet -o ablation=mean -o sizes=1,5,10 --out eval.json
    headscope circuit evaluate ioi.parquet --task facts --reference facts.parquet   # next to facts' own circuit
    headscope circuit evaluate ioi.parquet -o nodes=heads     # Wang et al.'s nodes: heads only, MLPs kept
    headscope circuit evaluate ioi.parquet -o nodes=heads -o head_positions=9.6@END,9.9@END,3.0@S2,2.2@S1+1

``--model`` and ``--task`` default to the table's; on the table's own task the task parameters
recorded in its provenance are reused (``-o`` overrides them). ``-o KEY=VALUE`` goes to the task
if it has that parameter, otherwise to the evaluation (:func:`evaluation_options`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer


def evaluation_options(model: Any, task: Any, ablation: str = "corrupted", metric: str = "logit_diff",
                       curve: bool = True, sizes: str = "", n_random: int = 3, samples: int = 3, greedy: int = 1,
                       seed: int = 0, nodes: str = "components", head_positions: str = "") -> None:
    """The ``-o`` options of ``headscope circuit evaluate`` (typed by these annotations).

    Args:
        ablation: ``corrupted`` (the same row's corrupted prompt) or ``mean`` (mean over the
            corrupted prompts, per position).
        metric: ``logit_diff`` or ``kl``.
        curve: compute the faithfulness curve against random edge sets.
        sizes: curve sizes, comma separated (default 1, 2, 5, 10, ... up to every edge).
        n_random: random edge sets per curve size.
        samples: random subsets K for completeness and minimality.
        greedy: greedy completeness steps.
        seed: seed of the random edge sets and subsets.
        nodes: nodes of completeness and minimality: ``components`` (heads and MLPs, each
            knocked out at every position) or ``heads`` (Wang et al. 2022: heads only, MLPs
            never knocked out; a head is knocked out at every position, the table having no
            per-head token).
        head_positions: with ``nodes=heads``, circuit heads' relevant tokens as HEAD@POSITION
            entries, e.g. ``9.6@END,9.9@END,3.0@S2,2.2@S1+1`` (heads as LAYER.HEAD, positions as
            the task's named positions with an optional +k/-k; a head may be listed once per
            token): a listed head is kept only at its positions in F(C\\K) and knocked out only
            there in F(M\\K) (Wang et al. 2022, RELEVANT_TOKENS); unlisted circuit heads: every
            position.
    """


def _sizes(text: str) -> list[int] | None:
    from headscope.errors import HeadscopeError

    if not text.strip():
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise HeadscopeError(f"sizes must be whole numbers separated by commas, e.g. -o sizes=1,5,10; got '{text}'.") from None


def register(group: typer.Typer) -> None:
    """Add ``evaluate`` to the ``circuit`` command group."""

    @group.command("evaluate")
    def evaluate(
        edges: Path = typer.Argument(..., help="EdgeScores Parquet (from `headscope circuit`); its `circuit` column is the circuit"),
        model: str | None = typer.Option(None, "--model", "-m", help="model (default: the table's)"),
        task: str | None = typer.Option(None, "--task", "-t", help="contrastive task (default: the table's)"),
        out: Path | None = typer.Option(None, "--out", help="summary .parquet or .json (default results/<model>_<task>_circuit_eval.parquet)"),
        seed: int | None = typer.Option(None, "--seed", help="random seed for the task"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, mps or auto"),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
        option: list[str] | None = typer.Option(None, "--option", "-o", help="task or evaluation option KEY=VALUE (repeatable)"),
        reference: Path | None = typer.Option(None, "--reference", help="another EdgeScores table (e.g. the task's own circuit): its faithfulness and overlap"),
    ) -> None:
        """Faithfulness, faithfulness curve, completeness and minimality of a saved circuit.

        Completeness and minimality nodes: -o nodes=components (default: heads and MLPs, each knocked out at every position) or -o nodes=heads (Wang et al. 2022, Sec. 4: attention heads only, MLPs never knocked out; a head is knocked out at every position, or with -o head_positions=9.6@END,3.0@S2,2.2@S1+1 a listed circuit head is kept only at its positions).
        """
        from headscope.circuits.evaluate import evaluate_circuit
        from headscope.circuits.nodes import parse_head_positions
        from headscope.cli.display import console, load_with_status
        from headscope.cli.options import check_device, parse_options, route_options
        from headscope.cli.paths import check_output, slug
        from headscope.errors import HeadscopeError
        from headscope.methods import MethodInfo
        from headscope.plan import plan_task
        from headscope.results.edge_scores import read_edge_scores
        from headscope.tasks.protocols import ContrastiveTask
        from headscope.tasks.registry import get_task_info

        check_device(device)
        table = read_edge_scores(edges)
        ref_table = read_edge_scores(reference) if reference is not None else None
        if not len(table):
            raise HeadscopeError(f"{edges} has no edges.")
        prov = table.provenance
        made_task = str(table["task"].iloc[0])
        model = model or str(table["model"].iloc[0])
        task = task or made_task
        info = get_task_info(task)
        meta = MethodInfo("circuit evaluate", evaluation_options, "")
        task_kw, eval_kw = route_options(parse_options(option), info.parameters(), meta.options())
        task_kw, eval_kw = info.coerce(task_kw, text=True), meta.coerce(eval_kw, text=True)
        recorded = prov.get("task", {}) if isinstance(prov.get("task"), dict) else {}
        if task == made_task:
            task_kw = {**{k: v for k, v in recorded.items() if k in info.parameters()}, **task_kw}
        if seed is not None and "seed" in info.parameters():
            task_kw["seed"] = seed
        suffix = ".json" if out is not None and out.suffix == ".json" else ".parquet"
        out = check_output(out or Path("results") / f"{slug(model)}_{task}_circuit_eval.parquet", suffix, "--out")
        task_obj = plan_task(task, task_kw, requires=ContrastiveTask, what="circuit evaluation")
        sizes = _sizes(eval_kw.pop("sizes", ""))
        parse_head_positions(eval_kw.get("head_positions", ""), eval_kw.get("nodes", "components"))  # before the model loads
        loaded = load_with_status(model, device=device, dtype=dtype)
        source = {"file": str(edges), "model": str(table["model"].iloc[0]), "task": made_task,
                  "task_params": recorded, "method": str(table["method"].iloc[0]),
                  "edges": int(table["circuit"].sum())}
        t1 = time.perf_counter()
        result = evaluate_circuit(loaded, task_obj, table, sizes=sizes, source=source, reference=ref_table, **eval_kw)
        console.print(f"circuit from [bold]{source['task']}[/] ({source['method']}, {source['edges']} edges) evaluated on "
                      f"[bold]{task}[/]{' (cross-task)' if result.provenance['choices']['cross_task'] else ''}, "
                      f"ablation {result.provenance['options']['ablation']}, in {time.perf_counter() - t1:.1f} s")
        if eval_kw.get("head_positions"):
            placed = result.provenance["choices"]["head_positions"]
            console.print("head positions (kept only there in F(C\\K)): "
                          + ", ".join(f"{node}@{pos}" for node, at in placed.items() for pos in at))
        for line in summary_lines(result.table):
            console.print(line)
        console.print(f"wrote {result.write(out)}")


def summary_lines(table: Any) -> list[Any]:
    """Printable summary: metrics and faithfulness, the curve, completeness, minimality per node."""
    from rich.table import Table

    rows = table.to_dict("records")
    pick = {(r["quantity"], r["subset"]): r for r in rows if r["quantity"] in ("metric", "faithfulness", "nodes")}
    nodes = pick[("nodes", "circuit")]["K"]
    lines: list[Any] = [
        f"metric: clean {pick[('metric', 'clean')]['value']:.4f}, corrupted {pick[('metric', 'corrupted')]['value']:.4f}, "
        f"circuit {pick[('metric', 'circuit')]['value']:.4f}",
        f"faithfulness {pick[('faithfulness', 'circuit')]['value']:.4f} ({pick[('faithfulness', 'circuit')]['edges']} edges); "
        f"nodes: {nodes or 'none'}",
    ]
    pick_ref = [r for r in rows if r["quantity"] == "faithfulness" and r["subset"] == "reference"]
    if pick_ref:
        ov = {r["subset"]: r for r in rows if r["quantity"] == "overlap"}
        lines.append(f"reference circuit: faithfulness {pick_ref[0]['value']:.4f} ({pick_ref[0]['edges']} edges); overlap "
                     f"edges {ov['edges']['f_a']:.0f} of {ov['edges']['f_b']:.0f} (Jaccard {ov['edges']['value']:.3f}), "
                     f"nodes {ov['nodes']['f_a']:.0f} of {ov['nodes']['f_b']:.0f} (Jaccard {ov['nodes']['value']:.3f})")
    curve = [r for r in rows if r["quantity"] == "curve"]
    if curve:
        t = Table(title="faithfulness curve (top-k by |score| vs random k-edge sets)")
        for col in ("edges", "top-k", "random mean", "random std"):
            t.add_column(col, justify="right")
        for k in dict.fromkeys(r["edges"] for r in curve):
            got = {r["subset"]: r["value"] for r in curve if r["edges"] == k}
            t.add_row(str(k), f"{got['top']:.4f}", f"{got['random_mean']:.4f}", f"{got['random_std']:.4f}")
        lines.append(t)
    inc = [r for r in rows if r["quantity"] == "incompleteness"]
    t = Table(title="completeness: |F(C\\K) - F(M\\K)| (Wang et al. 2022)")
    for col in ("K", "nodes in K", "F(C\\K)", "F(M\\K)", "incompleteness"):
        t.add_column(col, justify="left" if col == "nodes in K" else "right")
    for r in inc:
        t.add_row(r["subset"], r["K"] or "{}", f"{r['f_a']:.4f}", f"{r['f_b']:.4f}", f"{r['value']:.4f}")
    lines.append(t)
    mins = [r for r in rows if r["quantity"] == "minimality"]
    t = Table(title="minimality: |F(C\\(K u {v})) - F(C\\K)| per node v")
    for col in ("v", "K = {}", "max over K", "mean over K"):
        t.add_column(col, justify="left" if col == "v" else "right")
    for v in dict.fromkeys(r["node"] for r in mins):
        vals = [r["value"] for r in mins if r["node"] == v]
        empty = next(r["value"] for r in mins if r["node"] == v and r["subset"] == "empty")
        t.add_row(v, f"{empty:.4f}", f"{max(vals):.4f}", f"{sum(vals) / len(vals):.4f}")
    lines.append(t)
    return lines
