"""Execute a recipe: resumable steps, progress, one Parquet per step, then a report.

Resuming: a step is skipped when ``<out_dir>/<step id>.parquet`` exists and its provenance
carries the same *step hash* — the SHA-256 of the model spec, dtype and the step's resolved
analyzer, task, parameters and options (head selectors resolved to the actual heads, so a
changed upstream result reruns its dependants). ``--force`` reruns everything.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from headscope.errors import HeadscopeError, suggest
from headscope.recipes_runner.spec import Recipe, Step, merge
from headscope.results import HeadScores, read_parquet
from headscope.results.edge_scores import read_edge_scores

Head = tuple[int, int]


@dataclass
class RunResult:
    """What a recipe run produced: step id -> Parquet path, the steps skipped, the report."""

    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def slug(text: str) -> str:
    """A file-name-safe form of a model spec (``EleutherAI/pythia-70m`` -> ``EleutherAI-pythia-70m``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def select_heads(scores: HeadScores, sel: dict[str, Any]) -> list[Head]:
    """Heads chosen by a selector (see :mod:`headscope.recipes_runner.spec`)."""
    from headscope.report.build import whole_head_rows

    rows = whole_head_rows(scores)
    metric = sel.get("metric") or rows.metrics[0]
    if metric not in rows.metrics:
        raise HeadscopeError(f"selector on step '{sel['heads_from']}': no metric '{metric}'."
                             f"{suggest(metric, rows.metrics)} Metrics: {', '.join(rows.metrics)}.")
    part = rows[rows["metric"] == metric].dropna(subset=["score"])
    order = sel.get("order", "descending")
    key = part["score"].abs() if order == "absolute" else part["score"]
    part = part.loc[key.sort_values(ascending=order == "ascending", kind="stable").index]
    if "threshold" in sel:
        t = float(sel["threshold"])
        val = part["score"].abs() if order == "absolute" else part["score"]
        part = part[val < t] if order == "ascending" else part[val > t]
    part = part.head(int(sel.get("k", 3)))
    return [(int(r.layer), int(r.head)) for r in part.itertuples()]


def heads_text(heads: list[Head]) -> str:
    return ",".join(f"{layer}.{head}" for layer, head in heads)


def resolve(value: Any, results: dict[str, HeadScores]) -> Any:
    """Replace head selectors by ``"L.H,L.H" + suffix`` strings (other values unchanged)."""
    if isinstance(value, dict) and "heads_from" in value:
        heads = select_heads(results[value["heads_from"]], value)
        if not heads:
            raise HeadscopeError(f"selector on step '{value['heads_from']}' chose no heads: relax its threshold or k.")
        return heads_text(heads) + str(value.get("suffix", ""))
    return value


def step_hash(model: str, dtype: str, payload: dict[str, Any]) -> str:
    """SHA-256 of what determines a step's result."""
    text = json.dumps({"model": model, "dtype": dtype, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def classify(step: Step, results: dict[str, HeadScores], recipe_name: str) -> HeadScores:
    """Head classes from earlier results: each rule's heads get its class (earlier rules win).

    Returns HeadScores with metric ``head_class`` (score 1 classified, 0 not; ``head_class``
    column the class name or ``""``) over the layer x head grid of the referenced results.
    """
    refs = [results[r["heads_from"]] for r in step.classify]
    n_layers = max(int(s["layer"].max()) for s in refs) + 1
    n_heads = max(int(s["head"].max()) for s in refs) + 1
    names = np.full((n_layers, n_heads), "", dtype=object)
    chosen: list[dict[str, Any]] = []
    for rule in step.classify:
        heads = select_heads(results[rule["heads_from"]], rule)
        fresh = [h for h in heads if not names[h]]
        for layer, head in fresh:
            names[layer, head] = str(rule["class"])
        chosen.append({**rule, "heads": heads_text(heads), "assigned": heads_text(fresh)})
    first = refs[0]
    prov = {"analyzer": "classify", "model": first.provenance.get("model", {}),
            "task": first.provenance.get("task", {}),
            "choices": {"rules": chosen, "precedence": "earlier rules win"}, "recipe": {"name": recipe_name}}
    return HeadScores.from_matrix(
        (names != "").astype(float), model=str(first["model"].iloc[0]), task=str(first["task"].iloc[0]),
        analyzer="classify", metric="head_class", extra={"head_class": names}, provenance=prov,
    )


def check_available(recipe: Recipe) -> None:
    """Fail fast, before loading a model, on methods, tasks and options this headscope lacks:
    every analyzer or circuit step is planned (:func:`headscope.plan.plan`, plain and with its
    ``quick`` overrides): method and task names, option names and types, the task built and
    checked against the method's contract. Head selectors (``heads_from``) are resolved later;
    only their option names are checked here."""
    from headscope.methods import get_method, list_methods
    from headscope.tasks.registry import TASKS, load_builtin_tasks

    load_builtin_tasks()
    for step in recipe.steps:
        if step.kind not in ("analyzer", "circuit"):
            continue
        where = f"recipe '{recipe.name}' step '{step.id}': "
        kind = "edges" if step.kind == "circuit" else "heads"
        name = str(step.circuit if kind == "edges" else step.analyzer)
        if kind == "edges":
            try:
                method = get_method(name, kind)
            except HeadscopeError as exc:
                raise HeadscopeError(f"{where}{exc}") from None
        else:
            known = [m.name for m in list_methods(kind)]
            if name not in known:
                raise HeadscopeError(
                    f"recipe '{recipe.name}' needs analyzer '{name}' (step '{step.id}'), which is not "
                    f"registered in this headscope.{suggest(name, known)} Registered: {', '.join(sorted(known))}."
                )
            method = get_method(name, kind)
        if step.task not in TASKS:
            raise HeadscopeError(
                f"recipe '{recipe.name}' needs task '{step.task}' (step '{step.id}'), which is not registered "
                f"in this headscope.{suggest(str(step.task), TASKS)} Registered: {', '.join(sorted(TASKS))}."
            )
        for label, extra in (("", {}), (" (quick)", step.quick)):
            _plan_step(method, step, merge({"task_params": step.task_params, "options": step.options}, extra),
                       f"{where.rstrip(': ')}{label}: ")


def _plan_step(method: Any, step: Step, cfg: dict[str, Any], where: str) -> None:
    """Plan one configuration of a step (one-line errors prefixed with ``where``)."""
    from headscope.plan import plan

    selectors = [k for k, v in cfg["options"].items() if _is_selector(v)]
    bad = [k for k in selectors if k not in method.options()]
    if bad:
        raise HeadscopeError(f"{where}{method.label} has no option '{bad[0]}'.{suggest(bad[0], method.options())}")
    options = {k: v for k, v in cfg["options"].items() if k not in selectors}
    plan(method.name, str(step.task), options, task_params=cfg["task_params"], kind=method.kind, where=where)


def _is_selector(value: Any) -> bool:
    return isinstance(value, dict) and "heads_from" in value


def _output_dir(recipe: Recipe, spec: str, quick: bool, out_dir: str | Path | None) -> Path:
    """The run's output directory, created: ``out_dir`` or the recipe's / the default one.

    Every step's output must be a plain file directly inside it (one-line errors otherwise).
    """
    # the recipe may only name a relative directory (checked by load_recipe); the user's
    # --out-dir may be anywhere
    base = Path(recipe.outputs.get("dir") or f"results/{slug(recipe.name)}/{slug(spec)}{'-quick' if quick else ''}")
    target = Path(out_dir).expanduser() if out_dir is not None else base
    for step in recipe.steps:  # every output a plain file directly inside the output directory
        if Path(f"{step.id}.parquet").name != f"{step.id}.parquet" or step.id.startswith("."):
            raise HeadscopeError(f"recipe '{recipe.name}': step id {step.id!r} is not a plain name.")
    if target.exists() and not target.is_dir():
        raise HeadscopeError(f"output directory {target} is a file: pass another --out-dir.")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeadscopeError(f"cannot create output directory {target}: {exc.strerror or exc}. Pass a writable --out-dir.") from None
    return target


@dataclass
class _LazyModel:
    """The run's model, loaded (and timed in the log) on first use unless one was given."""

    spec: str
    device: str | None
    dtype: str | None
    device_map: str | None
    log: Callable[[str], None]
    model: Any = None

    def get(self) -> Any:
        """The loaded :class:`Model`."""
        if self.model is None:
            from headscope.models import load_model

            t0 = time.perf_counter()
            self.log(f"loading {self.spec} ...")
            self.model = load_model(self.spec, device=self.device, dtype=self.dtype, device_map=self.device_map)
            self.log(f"loaded {self.spec} in {time.perf_counter() - t0:.1f} s")
        return self.model


@dataclass
class _RecipeRun:
    """One recipe run: its settings and what its steps produced so far.

    Attributes:
        results: step id -> HeadScores of analyzer and classify steps (head selectors read them).
        edges: step id -> EdgeScores of circuit steps.
    """

    recipe: Recipe
    spec: str
    dtype: str | None
    quick: bool
    force: bool
    progress: bool
    model_override: str | None
    log: Callable[[str], None]
    model: _LazyModel
    result: RunResult
    results: dict[str, HeadScores] = field(default_factory=dict)
    edges: dict[str, Any] = field(default_factory=dict)

    def store(self, step: Step, scores: Any, path: Path) -> None:
        """Keep a step's scores (circuit steps apart) and record its output path."""
        (self.edges if step.kind == "circuit" else self.results)[step.id] = scores
        self.result.paths[step.id] = path


def _step_payload(step: Step, cfg: dict[str, Any], results: dict[str, HeadScores]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a step's hash covers (head selectors resolved to heads), and its resolved options."""
    if step.kind == "classify":
        rules = [{**r, "resolved": heads_text(select_heads(results[r["heads_from"]], r))} for r in step.classify]
        return {"classify": rules}, {}
    if step.kind == "circuit":
        options = dict(cfg["options"])
        return {"circuit": step.circuit, "task": step.task, "task_params": cfg["task_params"], "options": options}, options
    options = {k: resolve(v, results) for k, v in cfg["options"].items()}
    return {"analyzer": step.analyzer, "task": step.task, "task_params": cfg["task_params"], "options": options}, options


def _up_to_date(step: Step, path: Path, digest: str) -> Any | None:
    """The step's earlier output at ``path`` if it exists, reads and carries ``digest``, else None."""
    if not path.exists():
        return None
    try:
        old = read_edge_scores(path) if step.kind == "circuit" else read_parquet(path)
    except HeadscopeError:
        old = None
    if old is not None and old.provenance.get("recipe", {}).get("hash") == digest:
        return old
    return None


def _execute_step(run: _RecipeRun, step: Step, cfg: dict[str, Any], options: dict[str, Any], prefix: str) -> Any:
    """Compute one step: head classes, or the planned analyzer / circuit method on the model."""
    from headscope.plan import plan
    from headscope.plan import run as run_plan

    if step.kind == "classify":
        run.log(f"{prefix}: head classes from {', '.join(dict.fromkeys(r['heads_from'] for r in step.classify))}")
        return classify(step, run.results, run.recipe.name)
    what = f"circuit {step.circuit}" if step.kind == "circuit" else str(step.analyzer)
    run.log(f"{prefix}: {what} on {step.task} "
            f"{json.dumps(cfg['task_params'])} {json.dumps(options, default=str)}")
    kind = "edges" if step.kind == "circuit" else "heads"
    call = plan(str(step.circuit if kind == "edges" else step.analyzer), str(step.task), options,
                task_params=cfg["task_params"], kind=kind)
    if kind == "heads" and run.progress and "progress" in call.method.options() and "progress" not in call.given:
        call = replace(call, options={**call.options, "progress": True})
    return run_plan(call, run.model.get())


def _run_step(run: _RecipeRun, i: int, step: Step) -> None:
    """Run step ``i`` (1-based) unless its output is up to date; write it with the recipe provenance."""
    prefix = f"[{i}/{len(run.recipe.steps)}] {step.id}"
    cfg = merge({"task_params": step.task_params, "options": step.options},
                step.quick if run.quick else {})
    path = run.result.out_dir / f"{step.id}.parquet"
    payload, options = _step_payload(step, cfg, run.results)
    digest = step_hash(run.spec, str(run.dtype), payload)
    old = None if run.force else _up_to_date(step, path, digest)
    if old is not None:
        run.log(f"{prefix}: up to date ({path.name}), skipped")
        run.store(step, old, path)
        run.result.skipped.append(step.id)
        return
    t0 = time.perf_counter()
    scores = _execute_step(run, step, cfg, options, prefix)
    scores.provenance = {**scores.provenance, "recipe": {
        "name": run.recipe.name, "file": str(run.recipe.path), "step": step.id, "hash": digest, "quick": run.quick,
        "model_override": run.model_override}}
    scores.to_parquet(path)
    run.result.seconds[step.id] = time.perf_counter() - t0
    run.log(f"{prefix}: {len(scores)} rows in {run.result.seconds[step.id]:.1f} s -> {path}")
    run.store(step, scores, path)
    run.result.ran.append(step.id)


def _write_report(run: _RecipeRun) -> Path:
    """``<out_dir>/report.html`` over the run's head-score files, with the recipe's figures."""
    from headscope.recipes_runner.figures import recipe_figures
    from headscope.report import build_report

    recipe, spec, result = run.recipe, run.spec, run.result
    figs = recipe_figures(recipe, run.results, run.model.get, run.edges)
    notes = " ".join(x for x in (recipe.paper and f"Paper: {recipe.paper}.", recipe.description,
                                 f"Model: {spec}" + (" (quick settings)." if run.quick else ".")) if x)
    return build_report([result.paths[s.id] for s in recipe.steps if s.kind != "circuit"], result.out_dir / "report.html",
                        title=f"{recipe.title} — {spec}", extra_figures=figs, notes=notes)


def run_recipe(
    recipe: Recipe,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    quick: bool = False,
    out_dir: str | Path | None = None,
    force: bool = False,
    report: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    loaded_model: Any = None,
) -> RunResult:
    """Run every step of ``recipe`` (skipping up-to-date ones) and write the report.

    Args:
        recipe: from :func:`headscope.recipes_runner.load_recipe`.
        model: model spec overriding the recipe's (e.g. ``smollm2-135m`` offline).
        device, dtype, device_map: as :func:`headscope.load_model` (default: the recipe's).
        quick: merge each step's ``quick`` overrides (smoke-test size, used by CI).
        out_dir: output directory (default ``results/<recipe>/<model>[-quick]``).
        force: rerun steps even when their Parquet file is up to date.
        report: write ``<out_dir>/report.html``.
        progress: pass ``progress=True`` to analyzers that take it.
        log: where progress lines go.
        loaded_model: an already loaded :class:`Model` for ``model`` (skips loading).

    Returns:
        A :class:`RunResult`.
    """
    check_available(recipe)
    spec = model or recipe.model
    dtype = dtype or recipe.dtype
    device = device or recipe.device
    target = _output_dir(recipe, spec, quick, out_dir)
    run = _RecipeRun(recipe=recipe, spec=spec, dtype=dtype, quick=quick, force=force, progress=progress,
                     model_override=model, log=log, model=_LazyModel(spec, device, dtype, device_map, log, loaded_model),
                     result=RunResult(out_dir=target))
    for i, step in enumerate(recipe.steps, start=1):
        _run_step(run, i, step)
    if report:
        run.result.report = _write_report(run)
        log(f"wrote {run.result.report}")
    return run.result
