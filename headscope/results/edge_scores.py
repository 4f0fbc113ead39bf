"""``EdgeScores``: the tidy result of a circuit method, one row per edge.

A ``pandas.DataFrame`` subclass with at least the columns ``model, task, method, sender,
receiver, receiver_input, score, circuit`` (plus ``sender_layer``, ``receiver_layer`` and
``kv_group``: the query heads a k/v receiver's KV head serves). Optional: ``exact`` (the exact
edge-patching effect where verified), ``rank``, ``position`` (int: per-position tables, one row
per (edge, token position), from ``positions=each``; the rows of one edge sum to its summed score). ``score`` is the method's estimate of
``metric(edge patched) - metric(clean)`` of the prompt-mean metric, summed over positions;
``circuit`` marks the edges the method keeps. Provenance lives in ``.provenance`` and travels
in the Parquet schema metadata, exactly as for :class:`~headscope.results.HeadScores`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from headscope.errors import HeadscopeError
from headscope.results.frame import ProvenanceFrame
from headscope.results.head_scores import METADATA_KEY, write_parquet

EDGE_COLUMNS = ("model", "task", "method", "sender", "receiver", "receiver_input", "score", "circuit")


class EdgeScores(ProvenanceFrame):
    """Tidy per-edge scores. See the module docstring for the schema."""

    @classmethod
    def from_edges(cls, edges: list[Any], scores: Any, circuit: Any, *, model: str, task: str, method: str,
                   extra: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> EdgeScores:
        """Build from :class:`~headscope.circuits.graph.Edge` objects and per-edge arrays."""
        data: dict[str, Any] = {
            "model": model,
            "task": task,
            "method": method,
            "sender": [e.sender.name for e in edges],
            "receiver": [e.receiver.name for e in edges],
            "receiver_input": [e.receiver.input for e in edges],
            "score": [float(s) for s in scores],
            "circuit": [bool(c) for c in circuit],
            "sender_layer": [int(e.sender.layer) for e in edges],
            "receiver_layer": [int(e.receiver.layer) for e in edges],
            "kv_group": [",".join(map(str, e.receiver.kv_group)) for e in edges],
        }
        for key, value in (extra or {}).items():
            data[key] = list(value)
        out = cls(pd.DataFrame(data))
        if provenance is not None:
            out.provenance = provenance
        return out

    def top(self, k: int = 10) -> EdgeScores:
        """The ``k`` rows (edges, or (edge, position) pairs) with the largest ``|score|``."""
        order = self["score"].abs().sort_values(ascending=False, kind="stable").index[:k]
        return self.loc[order]

    def circuit_edges(self) -> EdgeScores:
        return self[self["circuit"]]

    def validate(self) -> EdgeScores:
        missing = [c for c in EDGE_COLUMNS if c not in self.columns]
        if missing:
            raise ValueError(f"EdgeScores is missing columns {missing}")
        if not pd.api.types.is_bool_dtype(self["circuit"]):
            raise ValueError(f"column 'circuit' must be boolean, is {self['circuit'].dtype}")
        return self

    def to_parquet(self, path: str | Path, **kwargs: Any) -> Path:  # type: ignore[override]
        """Write atomically to ``path`` with the provenance in the schema metadata."""
        self.validate()
        return write_parquet(pd.DataFrame(self), self.provenance, path, **kwargs)


def read_edge_scores(path: str | Path) -> EdgeScores:
    """Read an EdgeScores Parquet file, restoring its provenance; one-line errors otherwise."""
    import pyarrow.parquet as pq

    target = Path(path).expanduser()
    if not target.is_file():
        raise HeadscopeError(f"no such edge-scores file: {target}. Check the path.")
    try:
        table = pq.read_table(target)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise HeadscopeError(f"{target} is not a readable Parquet file ({type(exc).__name__}).") from None
    out = EdgeScores(table.to_pandas())
    missing = [c for c in EDGE_COLUMNS if c not in out.columns]
    if missing:
        raise HeadscopeError(f"{target} is not an edge-scores result (missing columns {missing}).")
    meta = table.schema.metadata or {}
    try:
        out.provenance = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    except ValueError:
        raise HeadscopeError(f"{target} has unreadable headscope provenance metadata (not JSON).") from None
    return out


def require_whole_edges(table: Any, purpose: str) -> None:
    """Refuse per-position (``position``), token-level route (``via``) and SVD-component (``component``)
    tables where whole edges are needed.

    Such tables repeat an edge once per position (or route row), so reading them as an edge list would
    count an edge several times and let a later row overwrite an earlier one.
    """
    extra = [c for c in ("position", "via", "component") if c in getattr(table, "columns", ())]
    if extra:
        raise HeadscopeError(f"{purpose} needs one row per edge, but this table has a '{extra[0]}' column (per-position or "
                             "token-level rows, or SVD components): rerun `headscope circuit` with positions=sum (routes: level=component; "
                             "composition_svd: method composition).")
