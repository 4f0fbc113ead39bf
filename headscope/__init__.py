"""headscope: find, score and intervene on the attention heads of transformer language models.

>>> import headscope as hs
>>> model = hs.load_model("smollm2-135m")          # offline after `make setup`
>>> scores = hs.score(model, task="induction")       # HeadScores, a tidy DataFrame
>>> scores.top(5, metric="induction")
>>> scores.to_parquet("induction.parquet")
>>> hs.plots.head_heatmap(scores, metric="induction").show()
>>> hs.verify_model(model).to_frame()               # headscope vs an independent raw HF copy
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from headscope.analyzers import ANALYZERS, get_analyzer, register_analyzer, run_analyzer
from headscope.errors import HeadscopeError
from headscope.models import Model, load_model
from headscope.results import HeadScores, read_parquet
from headscope.tasks import TASKS, make_task, register_task
from headscope.trace import Trace, trace

__all__ = [
    "ANALYZERS",
    "TASKS",
    "HeadScores",
    "HeadscopeError",
    "Model",
    "Trace",
    "get_analyzer",
    "load_model",
    "make_task",
    "read_parquet",
    "register_analyzer",
    "register_task",
    "run_analyzer",
    "score",
    "trace",
]


def score(
    model: Model | str = "smollm2-135m",
    task: Any = "induction",
    analyzer: str | None = None,
    task_params: dict[str, Any] | None = None,
    **options: Any,
) -> HeadScores:
    """Score heads: resolve the model and task by name if needed, then run the analyzer.

    Args:
        model: a loaded :class:`Model` or a spec for :func:`load_model`.
        task: a task object or a registered task name (see ``headscope tasks``).
        analyzer: registered analyzer name; default is the task's default analyzer.
        task_params: parameters for the task factory when ``task`` is a name.
        **options: analyzer options.
    """
    from headscope.errors import suggest
    from headscope.tasks.registry import _ensure_loaded, get_task_info

    # everything that can be checked without the model first
    if isinstance(task, str) or analyzer is None:
        info = get_task_info(task if isinstance(task, str) else task.name)
    else:
        _ensure_loaded()
        info = TASKS.get(getattr(task, "name", None))
    analyzer = analyzer or info.default_analyzer
    allowed = get_analyzer(analyzer).options()
    params = info.parameters() if info is not None else []
    for key, value in options.items():
        if key in allowed:
            continue
        if key in params:
            raise HeadscopeError(
                f"{key} is a parameter of task '{info.name}', not an option of analyzer '{analyzer}': "
                f"pass it as task_params={{{key!r}: {value!r}}}."
            )
        raise HeadscopeError(
            f"analyzer '{analyzer}' has no option {key!r}.{suggest(key, allowed)} Options: {', '.join(allowed) or 'none'}"
            + (f"; task parameters go in task_params= ({', '.join(params)})." if params else ".")
        )
    if isinstance(task, str):
        task = make_task(task, **(task_params or {}))
    elif task_params:
        raise HeadscopeError("task_params= applies to a task given by name; this task object is already built.")
    if isinstance(model, str):
        model = load_model(model)
    return run_analyzer(analyzer, model, task, **options)


def __getattr__(name: str) -> Any:
    if name == "plots":
        import importlib

        return importlib.import_module("headscope.plots")
    if name == "verify_model":  # conformance checks against a raw HF copy (headscope verify)
        from headscope.verify import verify_model

        return verify_model
    raise AttributeError(name)
