"""Head analyzers in the one method registry (:mod:`headscope.methods`): the analyzer names.

Contract: ``analyzer(model: Model, task: Task, **options) -> HeadScores``. Each analyzer states
its methodological choices in its docstring and records them in the result's provenance under
``choices``. Presets, task contracts and sharding are described in :mod:`headscope.methods`.

``register_analyzer`` is :func:`headscope.methods.register_method` with ``kind="heads"``;
``run_analyzer`` is :func:`headscope.plan.plan` + :func:`headscope.plan.run`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from headscope.methods import KindView, MethodInfo, get_method, load_builtins, register_method

AnalyzerInfo = MethodInfo  # deprecated name (one record type for every method), kept for this release
ANALYZERS = KindView("heads")


def register_analyzer(
    name: str,
    summary: str,
    tasks: tuple[str, ...] = (),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    shard: Any = None,
    requires: type | tuple[type, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register analyzer ``fn`` under ``name`` (:func:`headscope.methods.register_method`).

    Args:
        requires: the task contract(s) it needs (:mod:`headscope.tasks.protocols`).
        tasks: deprecated; task names are not contracts. Give ``requires=`` instead.
    """
    if tasks:
        warnings.warn("register_analyzer(tasks=...) is deprecated: give requires= a task contract "
                      "(headscope.tasks.protocols)", DeprecationWarning, stacklevel=2)
    return register_method(name, summary, kind="heads", requires=requires, presets=presets, shard=shard)


def load_builtin_analyzers() -> None:
    """Register the built-in methods (kept for this release: :func:`headscope.methods.load_builtins`)."""
    load_builtins()


def get_analyzer(name: str) -> MethodInfo:
    """Look up an analyzer, with close-name suggestions on a miss."""
    return get_method(name, kind="heads")


def run_analyzer(name: str, model: Any, task: Any, **options: Any) -> Any:
    """Run a registered analyzer on a built task: :func:`headscope.plan.plan` then
    :func:`headscope.plan.run` (options checked by name and type, the task by its contract)."""
    from headscope.plan import plan, run

    return run(plan(name, task, options, kind="heads"), model)
