"""Analyzers: ``(model, task, **options) -> HeadScores``, registered by name.

The CLI, the Python API and recipes all go through :func:`run_analyzer`.
"""

from headscope.analyzers.registry import (
    ANALYZERS,
    AnalyzerInfo,
    get_analyzer,
    register_analyzer,
    run_analyzer,
)

__all__ = ["ANALYZERS", "AnalyzerInfo", "get_analyzer", "register_analyzer", "run_analyzer"]
