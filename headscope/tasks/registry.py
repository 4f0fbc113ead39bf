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

    def coerce(self, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        """``params`` converted to the factory's annotations (:mod:`headscope.params`); a value
        that does not fit is a one-line error."""
        from headscope.params import coerce_all

        return coerce_all(self.factory, params, f"{where}task '{self.name}' parameter")


TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, summary: str, default_analyzer: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator that registers a task factory under ``name``."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[name] = TaskInfo(name, factory, summary, default_analyzer)
        return factory

    return deco


def get_task_info(name: str) -> TaskInfo:
    _ensure_loaded()
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
    return info.factory(**info.coerce(params))


def _ensure_loaded() -> None:
    """Import the modules that register built-in tasks."""
    import headscope.tasks.corpus  # noqa: F401
    import headscope.tasks.facts  # noqa: F401
    import headscope.tasks.induction_contrast  # noqa: F401
    import headscope.tasks.ioi  # noqa: F401
    import headscope.tasks.mcqa  # noqa: F401
    import headscope.tasks.needle  # noqa: F401
    import headscope.tasks.relations  # noqa: F401
    import headscope.tasks.repeated_tokens  # noqa: F401
    import headscope.tasks.safety_requests  # noqa: F401
    import headscope.tasks.succession  # noqa: F401
    import headscope.tasks.user_file  # noqa: F401
