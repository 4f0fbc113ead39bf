"""Merging the parts of a sharded run into the single result a one-process run writes.

Checks first, each a one-line :class:`HeadscopeError`: every file is a part (has
``provenance["shard"]``); all parts split the run the same way (same N, unit and unit list);
every shard 0..N-1 is there exactly once; and all parts agree on analyzer, model (weights,
dtype; not the device), task and options. Then the analyzer's (or circuit method's, see
:mod:`headscope.methods`) :class:`ShardSpec` merges them: by rows (each part holds only its
units' rows and records where they sit in the one-process frame; the frame is rebuilt by putting
every row back in its place, refused if the rows do not fill it exactly once) or by its own
``merge``.

The merged provenance is part 0's without ``shard``, with ``world_size`` = N and ``sharding``
(N, the unit, the number of units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def placed_rows(part: Any, spec: ShardSpec, first: bool) -> tuple[Any, np.ndarray, int]:
    """A part's rows, their positions in the one-process frame, and that frame's number of rows.

    A part records them (``shard["row_ranges"]``, ``shard["rows"]``; see
    :mod:`headscope.scale.shard`); a part written by an earlier headscope holds the whole grid, of
    which its own rows (and part 0's rows of no unit) are taken.
    """
    from headscope.scale.shard import own_rows, range_positions

    shard = part.provenance["shard"]
    if "row_ranges" not in shard:
        keep = own_rows(part, spec, shard["units"], shard.get("all_units") or [], first)
        return part.iloc[keep], keep, len(part)
    positions = range_positions(shard["row_ranges"])
    if len(positions) != len(part):
        raise HeadscopeError(f"shard {shard['index']}/{shard['count']} has {len(part)} rows but records {len(positions)}: "
                             "rerun that shard.")
    return part, positions, int(shard["rows"])


def merge_by_rows(parts: list[Any], spec: ShardSpec, identity: tuple[str, ...] = IDENTITY_COLUMNS) -> Any:
    """The one-process frame rebuilt from the parts' rows, each put back at its recorded position.

    Args:
        parts: in shard order, all of one type (HeadScores or EdgeScores), each holding its own
            units' rows (part 0 also the rows of no unit), with the same columns in the same order.
        identity: the columns that name a row: parts of an earlier headscope (whole grids) must
            agree on them row by row.

    Returns:
        The parts' type, without provenance (the caller sets it).
    """
    assert spec.row_units is not None
    base = parts[0]
    ident = [c for c in identity if c in base.columns]
    whole = [p for p in parts if "row_ranges" not in p.provenance["shard"]]
    for i, part in enumerate(parts[1:], start=1):
        if list(part.columns) != list(base.columns):
            raise HeadscopeError(f"shard {i} has different columns from shard 0: merge only parts of one run.")
    for part in whole[1:]:
        if len(part) != len(whole[0]) or not part[ident].reset_index(drop=True).equals(whole[0][ident].reset_index(drop=True)):
            raise HeadscopeError(f"shard {part.provenance['shard']['index']} has different rows from shard "
                                 f"{whole[0].provenance['shard']['index']}: merge only parts of one run.")
    placed = [placed_rows(p, spec, first=i == 0) for i, p in enumerate(parts)]
    sizes = {n for _, _, n in placed}
    positions = np.concatenate([pos for _, pos, _ in placed])
    if len(sizes) > 1 or not np.array_equal(np.sort(positions), np.arange(sizes.pop())):
        raise HeadscopeError("the parts' rows do not fill the run's rows exactly once: rerun the shards with one "
                             "headscope version.")
    frames = [pd.DataFrame(rows).reset_index(drop=True) for rows, pos, _ in placed if len(pos)]
    joined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames or [pd.DataFrame(base).iloc[:0]])[0]
    out = type(base)(joined.iloc[np.argsort(positions, kind="stable")].reset_index(drop=True))
    out.attrs.clear()
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
