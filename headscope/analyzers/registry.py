"""The analyzer registry (scikit-learn style: one contract, looked up by name).

Contract: ``analyzer(model: Model, task: Task, **options) -> HeadScores``. Each analyzer
states its methodological choices in its docstring and records them in the result's
provenance under ``choices``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headscope.errors import HeadscopeError, suggest

# modules whose import registers built-in analyzers
_BUILTIN_MODULES = (
    "headscope.analyzers.pattern_scores",
    "headscope.analyzers.activation_patching",
    "headscope.analyzers.attribution_patching",
    "headscope.analyzers.path_patching",
    "headscope.analyzers.direct_logit_attribution",
    "headscope.analyzers.successor_heads",
    "headscope.analyzers.copying_heads",
    "headscope.analyzers.echo_induction",
    "headscope.analyzers.retrieval_heads",
    "headscope.analyzers.logit_lens",
    "headscope.analyzers.maps",
    "headscope.analyzers.ships",
    "headscope.analyzers.sahara",
    "headscope.analyzers.trained_lens",
    "headscope.analyzers.select_and_copy",
)


@dataclass(frozen=True)
class AnalyzerInfo:
    """A registered analyzer."""

    name: str
    fn: Callable[..., Any]
    summary: str
    tasks: tuple[str, ...]

    def options(self) -> list[str]:
        """Keyword options the analyzer accepts (beyond model and task)."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        return [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]


ANALYZERS: dict[str, AnalyzerInfo] = {}


def register_analyzer(name: str, summary: str, tasks: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` under ``name``. ``tasks`` lists compatible tasks ("" = any)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ANALYZERS[name] = AnalyzerInfo(name, fn, summary, tuple(tasks))
        return fn

    return deco


def load_builtin_analyzers() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_analyzer(name: str) -> AnalyzerInfo:
    """Look up an analyzer, with close-name suggestions on a miss."""
    load_builtin_analyzers()
    if name not in ANALYZERS:
        raise HeadscopeError(
            f"unknown analyzer '{name}'.{suggest(name, ANALYZERS)} Analyzers: "
            f"{', '.join(sorted(ANALYZERS))} (see `headscope tasks`)."
        )
    return ANALYZERS[name]


def run_analyzer(name: str, model: Any, task: Any, **options: Any) -> Any:
    """Run a registered analyzer, checking its options and task first."""
    info = get_analyzer(name)
    allowed = info.options()
    bad = [k for k in options if k not in allowed]
    if bad:
        raise HeadscopeError(
            f"analyzer '{name}' has no option {bad[0]!r}.{suggest(bad[0], allowed)} "
            f"Options: {', '.join(allowed) or 'none'}."
        )
    task_name = getattr(task, "name", None)
    if info.tasks and task_name not in info.tasks:
        raise HeadscopeError(
            f"analyzer '{name}' does not run on task '{task_name}': it runs on {', '.join(info.tasks)}."
        )
    return info.fn(model, task, **options)
