"""One path from a method name to a result: :func:`plan` checks, :func:`run` executes.

``plan(name, task, options) -> Call`` does everything that needs no model, once, for every way
in (the CLI's ``score``/``circuit``, :func:`headscope.score`, :func:`headscope.circuit`,
recipes, sharding):

1. looks the method up in the one registry (:mod:`headscope.methods`);
2. routes options: with a task given by name, a key goes to the task if it is one of the task's
   parameters, else to the method (``-o KEY=VALUE`` on the CLI); unknown keys are one line;
3. checks and converts every value against its parameter's annotation once
   (:mod:`headscope.params`; ``text=True`` for command-line text);
4. builds the task and checks it against the method's contract
   (:mod:`headscope.tasks.protocols`): an incompatible task is refused here, before the model
   loads, with the tasks that fit;
5. expands ``preset=NAME``.

``run(call, model, backend)`` hands the call to a backend, nnsight-style: execution is one seam
(``Backend.__call__(call, model)``). :class:`Local` runs the method in this process and stamps
provenance (``world_size``, ``preset``, ``preset_options``); the shard and torch.distributed
backends are in :mod:`headscope.scale.backends`. ``model`` is a loaded Model, or a function that
loads one (a launcher backend loads inside its error handling, so one rank's failure reaches
every rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from headscope.errors import HeadscopeError, reject_unknown, suggest
from headscope.methods import KINDS, Kind, MethodInfo, get_method


@dataclass(frozen=True)
class Call:
    """A checked method call, ready for a model (see the module docstring).

    Attributes:
        method: the registry record.
        task: the built task object (it satisfies ``method.requires``).
        options: what ``method.fn`` receives: typed, the preset expanded.
        given: the typed options as given, before the preset (what a shard restricts).
        preset: the preset's name, or None.
        preset_options: the options the preset set (those not given explicitly).
        task_params: the typed parameters the task was built with (``{}`` for a task object).
    """

    method: MethodInfo
    task: Any
    options: dict[str, Any]
    given: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    preset_options: dict[str, Any] = field(default_factory=dict)
    task_params: dict[str, Any] = field(default_factory=dict)


def plan(
    name: str | None,
    task: Any = "induction",
    options: Mapping[str, Any] | None = None,
    *,
    task_params: Mapping[str, Any] | None = None,
    kind: Kind | None = None,
    text: bool = False,
    seed: int | None = None,
    where: str = "",
) -> Call:
    """Check and type a call of method ``name`` on ``task`` (see the module docstring).

    Args:
        name: a registered method (``circuit:<name>`` for a circuit method); None = the task's
            default analyzer.
        task: a registered task name, or a task object.
        options: method options; with a task given by name and no ``task_params``, also task
            parameters (routed by name, the task first).
        task_params: the task's parameters given apart (then ``options`` are the method's only).
        kind: restrict the lookup to ``heads`` (analyzers) or ``edges`` (circuit methods).
        text: values are command-line text (unannotated options read as JSON-ish text).
        seed: the task's ``seed`` if it has one, else the method's (``--seed``).
        where: a prefix for messages (a recipe step).

    Raises:
        HeadscopeError: one line for an unknown method, task, option or value, or a task that
            does not fit the method.
    """
    from headscope.tasks.registry import TASKS, get_task_info, load_builtin_tasks

    opts = dict(options or {})
    if isinstance(task, str):
        info = get_task_info(task)
    else:
        load_builtin_tasks()
        info = TASKS.get(getattr(task, "name", None))
    if name is None:
        if info is None:
            raise HeadscopeError("name an analyzer: this task object is not a registered task with a default analyzer.")
        name = info.default_analyzer
    method = get_method(name, kind)
    allowed = method.options()
    params = info.parameters() if info is not None else []
    noun = KINDS[method.kind]
    task_kw: dict[str, Any] = {}
    if isinstance(task, str) and task_params is None:
        task_kw, method_kw = route_options(opts, params, allowed, noun=noun, where=where)
    else:
        if task_params and not isinstance(task, str):
            raise HeadscopeError("task_params= applies to a task given by name; this task object is already built.")
        task_kw = dict(task_params or {})
        for key, value in opts.items():
            if key in allowed:
                continue
            if key in params:
                raise HeadscopeError(
                    f"{where}{key} is a parameter of task '{info.name}', not an option of {method.label}: "
                    f"pass it as task_params={{{key!r}: {value!r}}}."
                )
            if isinstance(task, str):
                raise HeadscopeError(
                    f"{where}{method.label} has no option {key!r}.{suggest(key, allowed)} Options: "
                    f"{', '.join(allowed) or 'none'}" + (f"; task parameters go in task_params= ({', '.join(params)})." if params else ".")
                )
        reject_unknown(f"{where}{method.label}", opts, allowed)
        method_kw = opts
    if seed is not None:
        if "seed" in params and isinstance(task, str):
            task_kw["seed"] = seed
        elif "seed" in allowed:
            method_kw["seed"] = seed
    method_kw = method.coerce(method_kw, where, text=text)
    if isinstance(task, str):
        task_obj, task_kw = build_task(info, task_kw, text=text, where=where)
    else:
        task_obj = task
    method.check_task(task_obj)
    call_kw, preset, applied = method.expand_preset(method_kw)
    return Call(method, task_obj, call_kw, method_kw, preset, applied, task_kw)


def route_options(options: Mapping[str, Any], task_params: list[str], method_options: list[str],
                  noun: str = "analyzer", where: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``options`` into (task parameters, method options) by name, the task first (``-o
    KEY=VALUE``); a key that is neither is a one-line error listing both."""
    task_kw: dict[str, Any] = {}
    method_kw: dict[str, Any] = {}
    for key, value in options.items():
        if key in task_params:
            task_kw[key] = value
        elif key in method_options:
            method_kw[key] = value
        else:
            raise HeadscopeError(
                f"{where}unknown option '{key}'.{suggest(key, [*task_params, *method_options])} Task parameters: "
                f"{', '.join(task_params) or 'none'}; {noun} options: {', '.join(method_options) or 'none'}."
            )
    return task_kw, method_kw


def build_task(info: Any, params: Mapping[str, Any], *, text: bool = False, where: str = "") -> tuple[Any, dict[str, Any]]:
    """A registered task (a :class:`~headscope.tasks.registry.TaskInfo`) built from parameters
    checked by name and converted to their annotations once.

    Returns:
        (the task object, the typed parameters).
    """
    reject_unknown(f"{where}task '{info.name}'", dict(params), info.parameters(), noun="parameter")
    typed = info.coerce(dict(params), where, text=text)
    return info.build(typed), typed


def plan_task(name: str, params: Mapping[str, Any] | None = None, *, requires: type | tuple[type, ...] = (),
              text: bool = False, seed: int | None = None, what: str = "this command") -> Any:
    """The task ``name`` built as :func:`plan` builds it, for commands that are not registered
    methods (``ablate``, ``circuit evaluate``): checked against ``requires`` (task contracts)
    before the model loads, with one line naming the tasks that fit."""
    from headscope.tasks.protocols import check_fits
    from headscope.tasks.registry import get_task_info

    info = get_task_info(name)
    params = dict(params or {})
    if seed is not None and "seed" in info.parameters():
        params["seed"] = seed
    task_obj, _ = build_task(info, params, text=text)
    contracts = requires if isinstance(requires, tuple) else (requires,)
    check_fits(task_obj, contracts, what)
    return task_obj


class Backend(Protocol):
    """Where a :class:`Call` executes: ``backend(call, model) -> result`` (None on a rank that
    does not write)."""

    def __call__(self, call: Call, model: Any) -> Any: ...


def resolve_model(model: Any) -> Any:
    """A loaded model: ``model`` itself, or the result of calling a zero-argument loader.

    Raises:
        HeadscopeError: a Hugging Face model or TransformerBridge not wrapped yet (one line
            naming ``hs.from_hf`` / ``hs.from_bridge``).
    """
    from headscope.models.wrap import not_a_model_message

    if (fix := not_a_model_message(model)) is not None:
        raise HeadscopeError(fix)
    return model() if callable(model) and not hasattr(model, "bridge") else model


def stamp(call: Call, result: Any, world_size: int = 1) -> Any:
    """Record the run's ``world_size`` (unless the method set it) and its preset in provenance."""
    if not hasattr(result, "provenance"):
        return result
    prov = dict(result.provenance)
    prov.setdefault("world_size", world_size)
    if call.preset is not None:
        prov["preset"], prov["preset_options"] = call.preset, dict(call.preset_options)
    result.provenance = prov
    return result


class Local:
    """Run the call in this process, on one model."""

    def __call__(self, call: Call, model: Any) -> Any:
        return stamp(call, call.method.fn(resolve_model(model), call.task, **call.options))


LOCAL = Local()


def run(call: Call, model: Any, backend: Backend | None = None) -> Any:
    """Execute a planned call on ``model`` (a Model, or a zero-argument loader) with ``backend``
    (default :class:`Local`)."""
    return (backend or LOCAL)(call, model)


def run_method(name: str, model: Any, task: Any, **options: Any) -> Any:
    """``run(plan(name, task, options), model)``: a registered method on a built task or a task name."""
    return run(plan(name, task, options), model)


__all__ = ["LOCAL", "Backend", "Call", "Local", "plan", "plan_task", "resolve_model", "route_options", "run", "run_method", "stamp"]

