"""The task registry: name -> factory, summary and default analyzer."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headscope.errors import HeadscopeError, reject_unknown, suggest


@dataclass(frozen=True)
class TaskInfo:
    """A registered task."""

    name: str
    factory: Callable[..., Any]
    summary: str
    default_analyzer: str

    def parameters(self) -> list[str]:
        """Names of the keyword parameters the factory accepts."""
        return [p for p in inspect.signature(self.factory).parameters if p != "self"]

    def coerce(self, params: dict[str, Any], where: str = "", text: bool = False) -> dict[str, Any]:
        """``params`` converted to the factory's annotations (:mod:`headscope.params`); a value
        that does not fit is a one-line error (``text=True``: command-line text)."""
        from headscope.params import coerce_all

        return coerce_all(self.factory, params, f"{where}task '{self.name}' parameter", text=text)

    def build(self, params: dict[str, Any]) -> Any:
        """The task object from parameters already checked and typed (:func:`headscope.plan.plan`)."""
        return self.factory(**params)

    def contracts(self) -> list[str]:
        """The names of the task contracts (:mod:`headscope.tasks.protocols`) the factory satisfies."""
        from headscope.tasks.protocols import CONTRACTS

        cls = self.factory
        return [c.__name__ for c in CONTRACTS if isinstance(cls, type) and issubclass(cls, c)]


TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, summary: str, default_analyzer: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator that registers a task factory under ``name``."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[name] = TaskInfo(name, factory, summary, default_analyzer)
        return factory

    return deco


def get_task_info(name: str) -> TaskInfo:
    load_builtin_tasks()
    if name not in TASKS:
        raise HeadscopeError(
            f"unknown task '{name}'.{suggest(name, TASKS)} Tasks: {', '.join(sorted(TASKS))} "
            "(see `headscope tasks`)."
        )
    return TASKS[name]


def make_task(name: str, **params: Any) -> Any:
    """Build a task by name with its parameters (unknown parameters, and values that do not fit
    a parameter's annotation, are one-line errors; text such as ``"8"`` is converted)."""
    info = get_task_info(name)
    allowed = info.parameters()
    reject_unknown(f"task '{name}'", params, allowed, noun="parameter")
    return info.build(info.coerce(params))


def tasks_fitting(requires: tuple[type, ...]) -> tuple[str, ...]:
    """The registered tasks whose factory (a class) satisfies one of the contracts ``requires``
    (:mod:`headscope.tasks.protocols`; the contracts have methods only, so ``issubclass`` works)."""
    load_builtin_tasks()
    return tuple(name for name, info in TASKS.items()
                 if isinstance(info.factory, type) and any(issubclass(info.factory, c) for c in requires))


_LOADED = False


def load_builtin_tasks() -> None:
    """Import every module of :mod:`headscope.tasks` once, registering the built-in tasks
    (no hand-kept list: a new task module registers itself)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    import headscope.tasks as package

    for mod in pkgutil.iter_modules(package.__path__, prefix="headscope.tasks."):
        importlib.import_module(mod.name)


_ensure_loaded = load_builtin_tasks  # deprecated private name, kept for this release
