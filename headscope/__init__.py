"""headscope: find, score and intervene on the attention heads of transformer language models.

>>> import headscope as hs
>>> model = hs.load_model("smollm2-135m")          # offline after `make setup`
>>> scores = hs.score(model, task="induction")       # HeadScores, a tidy DataFrame
>>> scores.top(5, metric="induction")
>>> scores.to_parquet("induction.parquet")
>>> hs.plots.head_heatmap(scores, metric="induction").show()
>>> edges = hs.circuit(model, "ioi", method="eap_ig", steps=5)   # EdgeScores
>>> hs.verify_model(model).to_frame()               # headscope vs an independent raw HF copy
"""

from __future__ import annotations

from typing import Any

from headscope.analyzers import ANALYZERS, get_analyzer, register_analyzer, run_analyzer
from headscope.errors import HeadscopeError
from headscope.methods import register_method
from headscope.models import Model, from_bridge, from_hf, load_model
from headscope.results import HeadScores, read_parquet
from headscope.tasks import TASKS, make_task, register_task
from headscope.trace import Trace, trace
from headscope.version import __version__ as __version__

__all__ = [
    "ANALYZERS",
    "circuit",
    "TASKS",
    "HeadScores",
    "HeadscopeError",
    "Model",
    "Trace",
    "from_bridge",
    "from_hf",
    "get_analyzer",
    "load_model",
    "make_task",
    "read_parquet",
    "register_analyzer",
    "register_method",
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
    """Score heads: plan the call (method, options, task: checked before the model loads), load
    the model if given by name, and run the analyzer (:mod:`headscope.plan`).

    Args:
        model: a loaded :class:`Model` or a spec for :func:`load_model`.
        task: a task object or a registered task name (see ``headscope tasks``).
        analyzer: registered analyzer name; default is the task's default analyzer.
        task_params: parameters for the task factory when ``task`` is a name. Without it,
            ``**options`` may mix task parameters and analyzer options, routed by name as the
            CLI's ``-o`` routes them (``hs.score(model, "induction", n_prompts=8)``).
        **options: analyzer options (and task parameters, see ``task_params``).
    """
    from headscope.plan import plan, run

    call = plan(analyzer, task, options, task_params=task_params, kind="heads")
    return run(call, load_model(model) if isinstance(model, str) else model)


def circuit(
    model: Model | str = "smollm2-135m",
    task: Any = "ioi",
    method: str = "eap_ig",
    task_params: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Score every edge with a circuit method (``headscope circuit``): ``EdgeScores``, one row per
    edge (sender -> receiver input), with the circuit flag and provenance.

    >>> edges = hs.circuit(model, "ioi", method="eap_ig", steps=5)
    >>> edges.top(10)

    Args:
        model: a loaded :class:`Model` or a spec for :func:`load_model`.
        task: a contrastive task object or name (``composition`` takes any task).
        method: ``eap``, ``eap_ig``, ``exact``, ``verified``, ``routes``, ``composition``, ... (``headscope tasks``).
        task_params: parameters for the task factory when ``task`` is a name (without it,
            task parameters in ``**options`` are routed by name, as for :func:`score`).
        **options: method options (``steps=5``, ``top_edges=50``, ``preset="paper"``).
    """
    from headscope.plan import plan, run

    call = plan(method, task, options, task_params=task_params, kind="edges")
    return run(call, load_model(model) if isinstance(model, str) else model)


def __getattr__(name: str) -> Any:
    if name == "plots":
        import importlib

        return importlib.import_module("headscope.plots")
    if name == "verify_model":  # conformance checks against a raw HF copy (headscope verify)
        from headscope.verify import verify_model

        return verify_model
    raise AttributeError(name)
