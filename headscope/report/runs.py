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


def _visible(path: Path, root: Path | None = None) -> bool:
    """False for hidden files (and files under hidden directories below ``root``): temporary
    files of interrupted writes (``.NAME.XXXX.partial``, older ``.NAME.XXXX.parquet``) are hidden."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return not any(part.startswith(".") for part in parts)


def expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files from paths, directories (all ``*.parquet`` below) and glob patterns (``**`` allowed).

    Hidden files (leading ``.``) are skipped in directories and globs: that is where interrupted
    writes leave their temporary files. A file named explicitly is kept as given. Each file
    appears once.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for item in items:
        text = str(Path(item).expanduser())
        if any(c in text for c in "*?["):
            out += [Path(p) for p in sorted(_glob.glob(text, recursive=True)) if Path(p).is_file()]
        elif Path(text).is_dir():
            root = Path(text)
            out += [p for p in sorted(root.rglob("*.parquet")) if p.is_file() and _visible(p, root)]
        else:
            out.append(Path(text))
    return list(dict.fromkeys(out))


def run_labels(files: Sequence[Path]) -> list[str]:
    """Short unique labels for files: their paths relative to the common directory, without ``.parquet``."""
    import os

    if not files:
        return []
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    labels = [str(f.relative_to(common)) for f in resolved]
    return [label[: -len(".parquet")] if label.endswith(".parquet") else label for label in labels]


def run_identity(scores: Any) -> dict[str, str]:
    """What must agree for two results to be ranked together: model, task and analyzer."""
    first = pd.DataFrame(scores).iloc[0] if len(scores) else {}
    model = scores.provenance.get("model", {}) if isinstance(scores.provenance.get("model"), dict) else {}
    return {
        "model": str(model.get("weights_sha256") or model.get("model_id") or (first["model"] if len(scores) else "")),
        "task": str(first["task"]) if len(scores) else "",
        "analyzer": str(first["analyzer"]) if len(scores) else "",
    }


def incompatibility(runs: Sequence[tuple[str, Any]]) -> str:
    """``""`` when the runs share model, task and analyzer, else a phrase naming the first difference."""
    if len(runs) < 2:
        return ""
    (name0, first), ids0 = runs[0], run_identity(runs[0][1])
    for name, scores in runs[1:]:
        ids = run_identity(scores)
        for key in ("model", "task", "analyzer"):
            if ids[key] != ids0[key]:
                a = str(pd.DataFrame(first)[key].iloc[0]) if len(first) else ids0[key]
                b = str(pd.DataFrame(scores)[key].iloc[0]) if len(scores) else ids[key]
                if a == b:  # same name, different weights
                    a, b = f"{a} ({ids0[key][:12]})", f"{b} ({ids[key][:12]})"
                return f"{key} {a} in {name0} but {b} in {name}"
    return ""


def read_runs(paths: str | Path | Iterable[str | Path], fields: Sequence[str] = DEFAULT_FIELDS) -> pd.DataFrame:
    """Concatenate many results files into one DataFrame.

    Each file is read on its own (never as one pyarrow dataset) and its rows are labelled by
    ``file`` and ``run`` (the path relative to the files' common directory, without
    ``.parquet``). Temporary files of interrupted writes are skipped.

    Args:
        paths: files, directories and/or glob patterns.
        fields: dotted provenance keys copied into columns (``model.model_id`` ->
            ``model_id``; ``recipe.step`` -> ``recipe_step``); ``file`` and ``run`` are always added.

    Returns:
        The tidy rows of every file (columns missing from some files are NaN).
    """
    files = expand(paths)
    if not files:
        raise HeadscopeError(f"no results files match {paths}.")
    parts = []
    for f, label in zip(files, run_labels(files), strict=True):
        scores = read_parquet(f)
        frame = pd.DataFrame(scores)
        frame["file"] = str(f)
        frame["run"] = label
        for key in fields:
            name = key.split(".", 1)[1] if key.startswith("model.") else key.replace(".", "_")
            frame[name] = _get(scores.provenance, key)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)
