"""``HeadScores``: the tidy result every analyzer returns.

A ``pandas.DataFrame`` subclass with one row per (layer, head, metric) and at least the columns
``model, task, analyzer, metric, layer, head, score`` (plus ``label`` = ``"L.H"``). Optional
columns: ``kv_head, position, stderr, n``. Provenance lives in ``.provenance`` (``df.attrs``)
and travels into the Parquet file's schema metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headscope.errors import HeadscopeError
from headscope.results.atomic import atomic_write
from headscope.results.frame import ProvenanceFrame

REQUIRED_COLUMNS = ("model", "task", "analyzer", "metric", "layer", "head", "score")
OPTIONAL_COLUMNS = ("kv_head", "position", "stderr", "n")
METADATA_KEY = b"headscope"


def write_parquet(frame: pd.DataFrame, provenance: dict[str, Any], path: str | Path, **kwargs: Any) -> Path:
    """Write ``frame`` atomically to ``path`` (:func:`atomic_write`: umask, existing mode kept),
    with ``provenance`` as JSON under the schema metadata key ``headscope``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(provenance, default=str).encode()
    table = table.replace_schema_metadata(meta)
    target = Path(path).expanduser()
    with atomic_write(target, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, **kwargs)
    return target


ORDERS = ("abs", "desc", "asc")
ORDER_TITLES = {"abs": "by |score|", "desc": "highest first", "asc": "lowest first"}


def check_order(order: str, name: str = "order") -> str:
    """``order`` if it is one of :data:`ORDERS`, else a one-line error (``name``: what to call it)."""
    if order not in ORDERS:
        from headscope.errors import suggest

        raise HeadscopeError(f"unknown {name} {order!r}.{suggest(str(order), ORDERS)} Use one of: {', '.join(ORDERS)}.")
    return order


def default_order(scores: Any) -> str:
    """The default ranking of one metric's scores: ``abs`` when the metric is signed (any score
    is negative: patching effects, logit differences), else ``desc``. On scores that are all
    >= 0 the two rankings agree, so this only changes where a negative score exists."""
    values = np.asarray(scores, dtype=float)
    return "abs" if bool((values < 0).any()) else "desc"


class HeadScores(ProvenanceFrame):
    """Tidy per-head scores. See the module docstring for the schema."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_matrix(
        cls,
        values: Any,
        *,
        model: str,
        task: str,
        analyzer: str,
        metric: str,
        extra: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> HeadScores:
        """Build from a (n_layers, n_heads) array of scores for one metric.

        ``extra`` maps optional column names to arrays of the same shape (e.g. ``stderr``,
        ``kv_head``) or to scalars.
        """
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 2:
            raise ValueError(f"values must be (n_layers, n_heads); got shape {arr.shape}")
        layers, heads = np.meshgrid(np.arange(arr.shape[0]), np.arange(arr.shape[1]), indexing="ij")
        data: dict[str, Any] = {
            "model": model,
            "task": task,
            "analyzer": analyzer,
            "metric": metric,
            "layer": layers.ravel().astype("int64"),
            "head": heads.ravel().astype("int64"),
            "score": arr.ravel(),
        }
        for key, value in (extra or {}).items():
            data[key] = np.asarray(value).ravel() if np.ndim(value) else value
        out = cls(pd.DataFrame(data))
        out["label"] = out["layer"].astype(str) + "." + out["head"].astype(str)
        if provenance is not None:
            out.provenance = provenance
        return out

    @classmethod
    def concat(cls, parts: list[HeadScores], provenance: dict[str, Any] | None = None) -> HeadScores:
        """Concatenate several results (e.g. several metrics) keeping one provenance."""
        out = cls(pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True))
        prov = provenance if provenance is not None else (parts[0].provenance if parts else {})
        out.provenance = prov
        return out

    # ------------------------------------------------------------------ views
    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self["metric"]))

    def _one_metric(self, metric: str | None) -> HeadScores:
        metrics = self.metrics
        if metric is None:
            if len(metrics) != 1:
                metric = metrics[0]
            else:
                return self
        if metric not in metrics:
            from headscope.errors import suggest

            raise HeadscopeError(f"no metric '{metric}' in these scores.{suggest(metric, metrics)} Metrics: {metrics}.")
        return self[self["metric"] == metric]

    def order_for(self, metric: str | None = None, order: str | None = None) -> str:
        """The ranking :meth:`top` uses for one metric: ``order`` if given (``abs``, ``desc``,
        ``asc``), else :func:`default_order` of that metric's scores."""
        return check_order(order) if order is not None else default_order(self._one_metric(metric)["score"])

    def top(self, k: int = 10, metric: str | None = None, absolute: bool = False,
            order: str | None = None) -> HeadScores:
        """The ``k`` top-ranked heads for one metric (default: the first metric).

        ``order``: ``abs`` (largest |score| first), ``desc`` (highest first) or ``asc`` (lowest
        first). Default (None): ``abs`` for a signed metric, one whose scores include a negative
        value (patching-type effects, where -0.9999 is as strong as +0.9999), else ``desc``
        (:func:`default_order`). ``absolute=True`` is the older spelling of ``order="abs"``.
        """
        rows = self._one_metric(metric)
        how = "abs" if absolute and order is None else (check_order(order) if order is not None
                                                         else default_order(rows["score"]))
        key = rows["score"].abs() if how == "abs" else rows["score"]
        ranked = key.sort_values(ascending=how == "asc", kind="stable").index[:k]
        return rows.loc[ranked]

    def matrix(self, metric: str | None = None, value: str = "score") -> pd.DataFrame:
        """A (layer x head) table of one metric; missing heads are NaN."""
        rows = self._one_metric(metric)
        if "position" in rows.columns and rows["position"].nunique(dropna=False) > 1:
            raise HeadscopeError("scores vary by position: filter one position before .matrix().")
        table = pd.DataFrame(rows).pivot_table(index="layer", columns="head", values=value, aggfunc="first")
        return table.sort_index().sort_index(axis=1)

    def heads(self, metric: str | None = None, threshold: float | None = None, k: int | None = None,
              order: str | None = None) -> list[tuple[int, int]]:
        """(layer, head) pairs: the top ``k`` (ranked as :meth:`top` ranks, ``order`` included)
        and/or those past ``threshold`` on that ranking (``|score| >`` for ``abs``, ``score >`` for
        ``desc``, ``score <`` for ``asc``)."""
        how = self.order_for(metric, order)
        rows = self.top(k or len(self), metric, order=how)
        if threshold is not None:
            if how == "abs":
                rows = rows[rows["score"].abs() > threshold]
            elif how == "asc":
                rows = rows[rows["score"] < threshold]
            else:
                rows = rows[rows["score"] > threshold]
        return [(int(r.layer), int(r.head)) for r in rows.itertuples()]

    def validate(self) -> HeadScores:
        """Check the schema; raise ValueError naming what is wrong."""
        missing = [c for c in REQUIRED_COLUMNS if c not in self.columns]
        if missing:
            raise ValueError(f"HeadScores is missing columns {missing}")
        for col in ("layer", "head"):
            if not pd.api.types.is_integer_dtype(self[col]):
                raise ValueError(f"column '{col}' must be integer, is {self[col].dtype}")
        return self

    # ------------------------------------------------------------------ I/O
    def to_parquet(self, path: str | Path, **kwargs: Any) -> Path:  # type: ignore[override]
        """Write atomically to ``path`` with the provenance in the schema metadata."""
        self.validate()
        return write_parquet(pd.DataFrame(self), self.provenance, path, **kwargs)


def read_parquet(path: str | Path) -> HeadScores:
    """Read one HeadScores Parquet file, restoring its provenance.

    A directory is refused (pyarrow would read every file in it as one table, merging runs):
    use :func:`headscope.report.runs.read_runs` for many files. So is a ``.partial`` file left
    by an interrupted write, and a file whose ``layer``/``head``/``score`` columns are not numeric.
    """
    import pyarrow.parquet as pq

    from headscope.results.atomic import is_temp_file

    target = Path(path).expanduser()
    if not target.exists():
        raise HeadscopeError(f"no such results file: {target}. Check the path.")
    if target.is_dir():
        raise HeadscopeError(
            f"{target} is a directory: read one .parquet file, or read_runs('{target}') for every run in it."
        )
    if is_temp_file(target):
        raise HeadscopeError(f"{target} is a temporary file left by an interrupted write: delete it and rerun.")
    try:
        table = pq.read_table(target)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise HeadscopeError(f"{target} is not a readable Parquet file ({type(exc).__name__}).") from None
    meta = table.schema.metadata or {}
    out = HeadScores(table.to_pandas())
    try:
        out.provenance = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    except ValueError:
        raise HeadscopeError(f"{target} has unreadable headscope provenance metadata (not JSON).") from None
    if not isinstance(out.provenance, dict):
        raise HeadscopeError(f"{target} has unreadable headscope provenance metadata (not a JSON object).")
    missing = [c for c in REQUIRED_COLUMNS if c not in out.columns]
    if missing and {"sender", "receiver", "receiver_input"} <= set(out.columns):
        raise HeadscopeError(f"{target} holds edge scores (headscope circuit), not head scores: read it with "
                             "headscope.results.edge_scores.read_edge_scores.")
    if missing:
        raise HeadscopeError(f"{target} is not a headscope result (missing columns {missing}).")
    for col in ("layer", "head"):
        if not pd.api.types.is_integer_dtype(out[col]):
            raise HeadscopeError(f"{target} is not a headscope result: column '{col}' is {out[col].dtype}, not integer.")
    for col in ("score", "stderr"):
        if col in out.columns and (not pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            raise HeadscopeError(f"{target} is not a headscope result: column '{col}' is {out[col].dtype}, not numeric.")
    return out
