"""Merging the parts of a sharded run into the single result a one-process run writes.

Checks first, each a one-line :class:`HeadscopeError`: every file is a part (has
``provenance["shard"]``); all parts split the run the same way (same N, unit and unit list);
every shard 0..N-1 is there exactly once; and all parts agree on analyzer, model (weights,
dtype; not the device), task and options. Then the analyzer's (or circuit method's, see
:mod:`headscope.methods`) :class:`ShardSpec` merges them: by rows (each row is taken from
the part that owns its unit) or by its own ``merge``.

The merged provenance is part 0's without ``shard``, with ``world_size`` = N and ``sharding``
(N, the unit, the number of units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headscope.errors import HeadscopeError
from headscope.scale.spec import ShardSpec, unit_key

IDENTITY_COLUMNS = ("metric", "position", "layer", "head")
EDGE_IDENTITY_COLUMNS = ("sender", "receiver", "receiver_input")


def _model_identity(prov: dict[str, Any]) -> dict[str, Any]:
    model = dict(prov.get("model") or {})
    model.pop("device", None)  # parts may run on different devices of one kind
    return model


def _agreement(prov: dict[str, Any]) -> dict[str, Any]:
    shard = prov.get("shard") or {}
    return {
        "analyzer": prov.get("analyzer"),
        "model": _model_identity(prov),
        "task": prov.get("task"),
        "options": prov.get("options"),
        "preset": prov.get("preset"),
        "unit": shard.get("unit"),
        "units": shard.get("all_units"),
    }


def check_parts(parts: list[Any], labels: list[str]) -> list[Any]:
    """The parts in shard order after the checks of the module docstring."""
    if not parts:
        raise HeadscopeError("no parts to merge: give the .shard-*.parquet files of one run.")
    shards = []
    for part, label in zip(parts, labels, strict=True):
        shard = part.provenance.get("shard")
        if not isinstance(shard, dict) or "index" not in shard or "count" not in shard:
            raise HeadscopeError(f"{label} is not a shard part (no shard in its provenance): merge only files written with --shard.")
        shards.append(shard)
    counts = sorted({int(s["count"]) for s in shards})
    if len(counts) > 1:
        raise HeadscopeError(f"parts come from different splits (N = {', '.join(map(str, counts))}): merge the parts of one run.")
    count = counts[0]
    seen: dict[int, str] = {}
    for shard, label in zip(shards, labels, strict=True):
        index = int(shard["index"])
        if index in seen:
            raise HeadscopeError(f"shard {index}/{count} is given twice ({seen[index]} and {label}): give each part once.")
        seen[index] = label
    missing = [i for i in range(count) if i not in seen]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise HeadscopeError(f"missing shard(s) {names}: run them (--shard {missing[0]}/{count}) and merge again.")
    reference = _agreement(parts[0].provenance)
    for part, label in zip(parts[1:], labels[1:], strict=True):
        got = _agreement(part.provenance)
        diff = [k for k in reference if got[k] != reference[k]]
        if diff:
            raise HeadscopeError(
                f"{label} differs from {labels[0]} in {', '.join(diff)}: merge only parts of one run "
                "(same model, task and options)."
            )
    order = sorted(range(len(parts)), key=lambda i: int(shards[i]["index"]))
    ordered = [parts[i] for i in order]
    all_units = [unit_key(u) for u in shards[0].get("all_units") or []]
    owned = [unit_key(u) for p in ordered for u in p.provenance["shard"].get("units") or []]
    if sorted(owned, key=str) != sorted(all_units, key=str):
        raise HeadscopeError("the parts' units do not cover the run's units exactly once: rerun the shards with one headscope version.")
    return ordered


def merge_by_rows(parts: list[Any], spec: ShardSpec, identity: tuple[str, ...] = IDENTITY_COLUMNS) -> Any:
    """Each row from the part owning its unit (rows of no unit from part 0).

    Args:
        parts: in shard order, all of one type (HeadScores or EdgeScores).
        identity: the columns that name a row; every part must have the same ones in the same order.

    Returns:
        The parts' type, without provenance (the caller sets it).
    """
    assert spec.row_units is not None
    base = parts[0]
    ident = [c for c in identity if c in base.columns]
    for i, part in enumerate(parts[1:], start=1):
        if len(part) != len(base) or not part[ident].reset_index(drop=True).equals(base[ident].reset_index(drop=True)):
            raise HeadscopeError(f"shard {i} has different rows from shard 0: merge only parts of one run.")
    owner_of = {unit_key(u): i for i, p in enumerate(parts) for u in p.provenance["shard"]["units"]}
    owner = np.array([owner_of.get(u, 0) if u is not None else 0 for u in spec.row_units(base)])
    out = type(base)(base.reset_index(drop=True).copy())
    for col in out.columns:
        if col in ident:
            continue
        values = out[col].to_numpy().copy()
        for i, part in enumerate(parts[1:], start=1):
            rows = owner == i
            if rows.any():
                values[rows] = part[col].to_numpy()[rows]
        out[col] = values
    return out


def merge_parts(parts: list[Any], labels: list[str] | None = None, mode: str = "merge") -> Any:
    """Merge the parts of one sharded run (any order) into one :class:`HeadScores` (or
    :class:`~headscope.results.edge_scores.EdgeScores` for a circuit method).

    Args:
        parts: HeadScores (EdgeScores) written by shards ``0..N-1`` of one run.
        labels: names for messages (file names); default ``part 0``, ``part 1``, ...
        mode: recorded in ``provenance["sharding"]["mode"]`` (``merge`` or ``torch.distributed``).
    """
    from headscope.methods import get_method

    labels = labels or [f"part {i}" for i in range(len(parts))]
    ordered = check_parts(parts, labels)
    prov0 = ordered[0].provenance
    method = get_method(str(prov0.get("analyzer")))
    spec = method.shard
    if spec is None:
        raise HeadscopeError(f"{method.label} has no sharding: these parts cannot be merged.")
    merged = spec.merge(ordered) if spec.merge is not None else merge_by_rows(ordered, spec)
    prov = dict(merged.provenance or prov0)
    shard = dict(prov.pop("shard", None) or prov0["shard"])
    prov["world_size"] = int(shard["count"])
    prov["sharding"] = {"mode": mode, "parts": int(shard["count"]), "unit": shard.get("unit"),
                        "n_units": len(shard.get("all_units") or [])}
    merged.provenance = prov
    return merged


def read_part(path: Path) -> Any:
    """A part file as EdgeScores when it has the edge columns, else as HeadScores (one-line
    errors for missing or unreadable files, from the readers)."""
    from headscope.results import read_parquet
    from headscope.results.edge_scores import EDGE_COLUMNS, read_edge_scores

    try:
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - missing or unreadable: the HeadScores reader says which
        names = set()
    return read_edge_scores(path) if set(EDGE_COLUMNS) <= names else read_parquet(path)


def merge_files(paths: list[Path]) -> Any:
    """Read and merge part files of head scores or edge scores (see :func:`merge_parts`)."""
    return merge_parts([read_part(p) for p in paths], [str(p) for p in paths])
