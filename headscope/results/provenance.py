"""Provenance: everything needed to know where a result came from and to rerun it."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
from typing import Any

LIBRARIES = ("torch", "transformer-lens", "transformers", "numpy", "pandas", "pyarrow", "plotly")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers."""
    versions: dict[str, str] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


def headscope_version() -> str:
    try:
        return importlib.metadata.version("headscope")
    except importlib.metadata.PackageNotFoundError:
        from headscope.version import __version__

        return __version__


def build_provenance(
    model: Any,
    task: dict[str, Any],
    analyzer: str,
    options: dict[str, Any],
    choices: dict[str, Any] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Assemble a provenance record (JSON-serialisable).

    Args:
        model: a :class:`headscope.models.Model` (its ``provenance()`` is used) or a dict.
        task: the task's name and parameters.
        analyzer: registry name of the analyzer.
        options: the analyzer options as called.
        choices: the methodological choices the analyzer made (BOS, normalisation, ablation
            kind, thresholds, ...), stated in its docstring and recorded here.
        seed: the random seed, if any.

    ``world_size`` is 1: the result of one process. Sharded parts and merged or torchrun results
    overwrite it with the number of shards (:mod:`headscope.scale`).
    """
    model_info = model.provenance() if hasattr(model, "provenance") else dict(model)
    return {
        "headscope_version": headscope_version(),
        "analyzer": analyzer,
        "model": model_info,
        "task": task,
        "options": options,
        "choices": choices or {},
        "seed": seed,
        "libraries": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": model_info.get("device", "cpu"),
        "world_size": 1,
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
