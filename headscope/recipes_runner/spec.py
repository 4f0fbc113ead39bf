"""Recipe files: declarative analyses (YAML or TOML) that ``headscope run`` executes.

A recipe names the model the paper used, the steps and the report::

    name: ioi_circuit
    title: The IOI circuit
    paper: Wang et al. 2022, "Interpretability in the Wild"
    model: gpt2                      # the paper's model; `headscope run --model M` overrides
    task: ioi                        # default task (and task_params) for every step
    task_params: {n_prompts: 16}
    steps:
      - id: act_patch                # output: <out_dir>/act_patch.parquet
        analyzer: activation_patching
        options: {act: z}
        quick: {task_params: {n_prompts: 2}}   # merged in with `--quick` (smoke-test size)
      - id: pp_q
        analyzer: path_patching
        options:                     # a head selector is resolved from an earlier step's result
          receivers: {heads_from: pp_resid, metric: path_patch, k: 3, order: ascending, suffix: ":q"}
      - id: classes                  # head classes from earlier results; no model needed
        classify:
          - {class: name mover, heads_from: pp_resid, metric: path_patch, k: 3, order: ascending}
    figures:                         # extra report figures
      - {kind: sender_receiver, steps: [pp_resid, pp_q]}
      - {kind: circuit, classes: classes, edges: [pp_resid, pp_q]}
      - {kind: attention, prompt: "...", heads: {heads_from: act_patch, metric: z_patch, k: 3}}
      - {kind: lens, prompt: "...", heads: "9.6,10.0", position: -1}

Head selectors (``heads_from``): ``metric`` (default: the step's first), ``k`` (default 3),
``order`` ``descending`` (default) | ``ascending`` | ``absolute``, optional ``threshold`` (keep
scores above it; below it for ``ascending``; ``|score|`` above it for ``absolute``) and
``suffix`` appended to the ``L.H,L.H`` list (e.g. ``":q"`` for path-patching receivers).
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from headscope.errors import HeadscopeError, suggest

STEP_KEYS = {"id", "analyzer", "circuit", "task", "task_params", "options", "quick", "classify", "description"}
RECIPE_KEYS = {"name", "title", "paper", "description", "model", "device", "dtype", "task", "task_params",
               "steps", "figures", "outputs", "quick", "notes"}
FIGURE_KINDS = ("sender_receiver", "circuit", "attention", "lens", "heatmap", "edges")
ORDERS = ("descending", "ascending", "absolute")
OUTPUT_KEYS = {"dir"}
STEP_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def check_step_id(sid: str, where: str) -> str:
    """A step id is a plain name (it becomes ``<out_dir>/<id>.parquet``): letters, digits,
    ``_``, ``.`` and ``-``, not starting with ``.`` or ``-``; never a path."""
    if not STEP_ID.match(sid):
        raise HeadscopeError(
            f"{where}: step id {sid!r} is not a plain name (letters, digits, _ . -; no '/', no leading '.'): "
            "it names the step's output file inside the output directory."
        )
    return sid


def check_output_dir(value: Any, where: str) -> str:
    """A recipe's ``outputs.dir`` must be a relative path inside the working directory (no ``..``,
    no absolute path, no ``~``): a shared recipe may not choose where on disk it writes.
    ``headscope run --out-dir`` (the user's own choice) may point anywhere."""
    text = str(value)
    parts = Path(text).parts
    if (not text.strip() or Path(text).is_absolute() or text.startswith("~") or ".." in parts
            or PureWindowsPath(text).drive or "\\" in text):
        raise HeadscopeError(
            f"{where}: outputs.dir {text!r} must be a relative path inside the working directory (no '..', "
            "no absolute path, no '~'); to write elsewhere pass --out-dir on the command line."
        )
    return text


@dataclass
class Step:
    """One recipe step: an analyzer run (``analyzer``), a circuit method run (``circuit``: its
    output is an :class:`~headscope.results.edge_scores.EdgeScores` file) or a head
    classification (``classify``)."""

    id: str
    analyzer: str | None = None
    circuit: str | None = None
    task: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    classify: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""

    @property
    def kind(self) -> str:
        return "classify" if self.classify else "circuit" if self.circuit else "analyzer"


@dataclass
class Recipe:
    """A parsed recipe (see the module docstring for the format)."""

    name: str
    path: Path
    model: str
    steps: list[Step]
    title: str = ""
    paper: str = ""
    description: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    figures: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise HeadscopeError(f"recipe {self.name}: no step '{step_id}'.{suggest(step_id, [s.id for s in self.steps])}")


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise HeadscopeError(f"no such recipe: {path}. See the recipes/ directory.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
            if not isinstance(data, dict):
                raise HeadscopeError(f"{path} is not a recipe: its top level must be a mapping.")
            return data
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HeadscopeError(f"cannot parse {path}: {first}.") from None
    except Exception as exc:  # noqa: BLE001 - yaml raises its own error tree
        if type(exc).__module__.startswith("yaml"):
            first = " ".join(str(exc).split())[:200]
            raise HeadscopeError(f"cannot parse {path}: {first}.") from None
        raise
    raise HeadscopeError(f"recipe {path} should end in .yaml, .yml or .toml.")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``extra`` wins), returning a new dict."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_selector(where: str, sel: Any, step_ids: list[str]) -> None:
    if not isinstance(sel, dict) or "heads_from" not in sel:
        return
    if sel["heads_from"] not in step_ids:
        raise HeadscopeError(f"{where}: heads_from '{sel['heads_from']}' is not an earlier step "
                             f"({', '.join(step_ids) or 'none yet'}).")
    if sel.get("order", "descending") not in ORDERS:
        raise HeadscopeError(f"{where}: order must be one of {', '.join(ORDERS)}.")


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe file (unknown keys, step references, figure kinds)."""
    path = Path(path).expanduser()
    data = _read(path)
    bad = sorted(set(data) - RECIPE_KEYS)
    if bad:
        raise HeadscopeError(f"{path}: unknown key '{bad[0]}'.{suggest(bad[0], RECIPE_KEYS)} Keys: {', '.join(sorted(RECIPE_KEYS))}.")
    for key in ("name", "model", "steps"):
        if key not in data:
            raise HeadscopeError(f"{path}: missing '{key}'.")
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise HeadscopeError(f"{path}: 'steps' must be a non-empty list.")
    for key in ("task_params", "outputs"):
        if not isinstance(data.get(key) or {}, dict):
            raise HeadscopeError(f"{path}: '{key}' must be a mapping (KEY: VALUE lines).")
    outputs = dict(data.get("outputs") or {})
    bad = sorted(set(outputs) - OUTPUT_KEYS)
    if bad:
        raise HeadscopeError(f"{path}: unknown outputs key '{bad[0]}': outputs takes only 'dir'.")
    if "dir" in outputs:
        outputs["dir"] = check_output_dir(outputs["dir"], path.name)
    if not isinstance(data.get("figures") or [], list) or not all(isinstance(f, dict) for f in data.get("figures") or []):
        raise HeadscopeError(f"{path}: 'figures' must be a list of mappings.")
    steps: list[Step] = []
    for i, raw in enumerate(data["steps"]):
        where = f"{path.name} step {i + 1}"
        if not isinstance(raw, dict):
            raise HeadscopeError(f"{where}: each step must be a mapping.")
        extra = sorted(set(raw) - STEP_KEYS)
        if extra:
            raise HeadscopeError(f"{where}: unknown key '{extra[0]}'.{suggest(extra[0], STEP_KEYS)}")
        sid = check_step_id(str(raw.get("id") or raw.get("analyzer") or raw.get("circuit") or f"step{i + 1}"), where)
        for key in ("task_params", "options", "quick"):
            if not isinstance(raw.get(key) or {}, dict):
                raise HeadscopeError(f"{where} ({sid}): '{key}' must be a mapping (KEY: VALUE lines).")
        for key in ("task_params", "options"):
            if not isinstance((raw.get("quick") or {}).get(key) or {}, dict):
                raise HeadscopeError(f"{where} ({sid}): 'quick.{key}' must be a mapping (KEY: VALUE lines).")
        if not isinstance(raw.get("classify") or [], list) or not all(isinstance(r, dict) for r in raw.get("classify") or []):
            raise HeadscopeError(f"{where} ({sid}): 'classify' must be a list of rules (mappings).")
        if sid in [s.id for s in steps]:
            raise HeadscopeError(f"{where}: duplicate step id '{sid}'.")
        if sum(bool(raw.get(k)) for k in ("analyzer", "classify", "circuit")) != 1:
            raise HeadscopeError(f"{where} ({sid}): give exactly one of 'analyzer', 'circuit' or 'classify'.")
        ids = [s.id for s in steps]
        for value in (raw.get("options") or {}).values():
            _check_selector(f"{where} ({sid})", value, ids)
        for rule in raw.get("classify") or []:
            if "class" not in rule or "heads_from" not in rule:
                raise HeadscopeError(f"{where} ({sid}): each classify rule needs 'class' and 'heads_from'.")
            _check_selector(f"{where} ({sid})", rule, ids)
        task = raw.get("task", data.get("task"))
        if (raw.get("analyzer") or raw.get("circuit")) and not task:
            raise HeadscopeError(f"{where} ({sid}): no task (set 'task' on the step or the recipe).")
        steps.append(Step(
            id=sid, analyzer=raw.get("analyzer"), circuit=raw.get("circuit"), task=task,
            task_params=merge(data.get("task_params") or {}, raw.get("task_params") or {}),
            options=dict(raw.get("options") or {}), quick=dict(raw.get("quick") or {}),
            classify=list(raw.get("classify") or []), description=str(raw.get("description", "")),
        ))
    ids = [s.id for s in steps]
    for fig in data.get("figures") or []:
        if fig.get("kind") not in FIGURE_KINDS:
            raise HeadscopeError(f"{path.name}: figure kind '{fig.get('kind')}' is not one of {', '.join(FIGURE_KINDS)}.")
        for ref in [*fig.get("steps", []), *fig.get("edges", []), *([fig["classes"]] if "classes" in fig else [])]:
            if ref not in ids:
                raise HeadscopeError(f"{path.name}: figure {fig['kind']} refers to unknown step '{ref}'.")
        _check_selector(f"{path.name} figure {fig['kind']}", fig.get("heads"), ids)
    return Recipe(
        name=str(data["name"]), path=path, model=str(data["model"]), steps=steps,
        title=str(data.get("title", data["name"])), paper=str(data.get("paper", "")),
        description=" ".join(str(data.get("description", "")).split()),
        device=str(data.get("device", "cpu")), dtype=str(data.get("dtype", "float32")),
        figures=list(data.get("figures") or []), outputs=outputs, raw=data,
    )
