"""Many runs at once: read every result file into one tidy frame, with provenance columns.

    from headscope.report.runs import read_runs
    df = read_runs("results/**/*.parquet")
    df.groupby(["model", "metric"])["score"].max()

See docs/querying.md for pandas and DuckDB recipes.
"""

from __future__ import annotations

import glob as _glob
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from headscope.errors import HeadscopeError
from headscope.results import read_parquet

DEFAULT_FIELDS = ("model.model_id", "model.dtype", "seed", "time_utc", "headscope_version", "recipe.step")


def _get(prov: dict[str, Any], dotted: str) -> Any:
    value: Any = prov
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files from paths, directories (all ``*.parquet`` below) and glob patterns (``**`` allowed)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(c in text for c in "*?["):
            out += [Path(p) for p in sorted(_glob.glob(text, recursive=True))]
        elif Path(text).is_dir():
            out += sorted(Path(text).rglob("*.parquet"))
        else:
            out.append(Path(text))
    return out


def read_runs(paths: str | Path | Iterable[str | Path], fields: Sequence[str] = DEFAULT_FIELDS) -> pd.DataFrame:
    """Concatenate many results files into one DataFrame.

    Args:
        paths: files, directories and/or glob patterns.
        fields: dotted provenance keys copied into columns (``model.model_id`` ->
            ``model_id``; ``recipe.step`` -> ``recipe_step``); ``file`` is always added.

    Returns:
        The tidy rows of every file (columns missing from some files are NaN).
    """
    files = expand(paths)
    if not files:
        raise HeadscopeError(f"no results files match {paths}.")
    parts = []
    for f in files:
        scores = read_parquet(f)
        frame = pd.DataFrame(scores)
        frame["file"] = str(f)
        for key in fields:
            name = key.split(".", 1)[1] if key.startswith("model.") else key.replace(".", "_")
            frame[name] = _get(scores.provenance, key)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)
