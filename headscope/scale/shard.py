"""One shard of a sweep: which units it owns, where its part file goes, and running it.

Shard ``I/N`` (0-based ``I``, as Slurm's ``SLURM_ARRAY_TASK_ID`` and torch.distributed's rank)
owns units ``I, I+N, I+2N, ...`` of the run's unit list (round-robin: the patching engine's cost
per layer falls with depth, so interleaving balances shards better than contiguous blocks).
A shard is an ordinary planned call (:func:`headscope.plan.plan`) with the unit-selecting option restricted
(:class:`headscope.scale.spec.ShardSpec`); its provenance records ``shard`` (index, count, unit,
its units and the run's) and ``world_size``, and keeps the run's own options so that the parts
of one run agree (:mod:`headscope.scale.merge`).

A part holds only its own rows. The analyzer returns the whole grid with the other shards' units
uncomputed; where each row belongs to a unit (``ShardSpec.row_units``) the part keeps the rows of
its units, and part 0 also the rows of no unit of the run (e.g. layers outside ``layers``: NaN in
a one-process run too). ``shard["rows"]`` records the whole frame's number of rows and
``shard["row_ranges"]`` where the kept rows sit in it (``[start, stop)`` pairs), so that the merge
puts every row back in its place. Parts of pooled units (retrieval heads' trials: every row pools
the shard's trials) keep every row.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headscope.errors import HeadscopeError
from headscope.scale.spec import Unit, unit_key

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
PART_INFIX = ".shard-"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, units: list[Unit]) -> list[Unit]:
        """This shard's units: every ``count``-th from ``index`` on."""
        return units[self.index :: self.count]


def parse_shard(text: str) -> Shard:
    """``"2/8"`` -> ``Shard(2, 8)``; anything else is a one-line error."""
    match = _SHARD.match(str(text))
    if not match:
        raise HeadscopeError(f"--shard {text!r} is not I/N: write e.g. --shard 0/4 (shards 0..3 of 4).")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise HeadscopeError(f"--shard {text}: I must lie in 0..N-1 and N >= 1, e.g. --shard 0/{max(count, 2)}.")
    return Shard(index, count)


def part_path(out: str | Path, shard: Shard) -> Path:
    """The part file of ``shard`` for the run whose merged output is ``out``:
    ``results/x.parquet`` -> ``results/x.shard-0002-of-0008.parquet``."""
    out = Path(out)
    width = max(4, len(str(shard.count - 1)))
    return out.with_name(f"{out.stem}{PART_INFIX}{shard.index:0{width}d}-of-{shard.count:0{width}d}{out.suffix}")


def _defaults(fn: Any) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def refuse_unsharded(method: Any, how: str) -> None:
    """A one-line error if ``method`` (a :class:`~headscope.methods.MethodInfo`) has no ShardSpec;
    ``how`` says how to run it instead."""
    if method.shard is None:
        from headscope.methods import KINDS, sharded

        noun = KINDS[method.kind]
        raise HeadscopeError(f"{method.label} cannot be split into shards: run it {how} "
                             f"(sharded {noun}s: {', '.join(sharded(method.kind))}).")


def call_units(call: Any, model: Any) -> list[Unit]:
    """Every unit of a planned call (:class:`headscope.plan.Call`) whose method splits."""
    refuse_unsharded(call.method, "without --shard or a launcher")
    return [unit_key(u) for u in call.method.shard.units(model, call.task, call.options)]


def run_call_shard(call: Any, model: Any, shard: Shard) -> Any:
    """Run shard ``shard`` of a planned call: only its units, provenance marked as a part.

    Returns:
        HeadScores (EdgeScores) of this shard's rows only (see the module docstring), with
        ``provenance["shard"]``.
    """
    from headscope.plan import stamp

    spec = call.method.shard
    units = call_units(call, model)
    if shard.count > len(units):
        raise HeadscopeError(
            f"shard {shard}: this run has only {len(units)} {spec.unit}(s) to split; use at most "
            f"{len(units)} shards."
        )
    mine = shard.take(units)
    result = stamp(call, call.method.fn(model, call.task, **{**call.options, **spec.restrict(mine)}))
    defaults = _defaults(call.method.fn)
    prov = dict(result.provenance)
    recorded = dict(prov.get("options", {}))
    for key in spec.options:  # the run's own values, not this shard's restriction
        if key in recorded:
            recorded[key] = call.options.get(key, defaults.get(key))
    prov["options"] = recorded
    prov["shard"] = {
        "index": shard.index,
        "count": shard.count,
        "unit": spec.unit,
        "units": [list(u) if isinstance(u, tuple) else u for u in mine],
        "all_units": [list(u) if isinstance(u, tuple) else u for u in units],
    }
    if spec.row_units is not None:
        keep = own_rows(result, spec, mine, units, first=shard.index == 0)
        prov["shard"]["rows"] = len(result)
        prov["shard"]["row_ranges"] = row_ranges(keep)
        result = result.iloc[keep].reset_index(drop=True)
    prov["world_size"] = shard.count
    result.provenance = prov
    return result


def own_rows(frame: Any, spec: Any, mine: Iterable[Any], units: Iterable[Any], first: bool) -> np.ndarray:
    """The positions of the rows of ``frame`` (the whole grid) that belong to units ``mine``, and,
    when ``first`` (shard 0), of rows that belong to no unit in ``units`` (the run's)."""
    owned, known = {unit_key(u) for u in mine}, {unit_key(u) for u in units}
    keys = [None if u is None else unit_key(u) for u in spec.row_units(frame)]
    return np.array([i for i, u in enumerate(keys) if u in owned or (first and u not in known)], dtype=np.int64)


def row_ranges(positions: np.ndarray) -> list[list[int]]:
    """Increasing row positions as ``[start, stop)`` pairs: ``[0, 1, 2, 5]`` -> ``[[0, 3], [5, 6]]``."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(positions)]])
    return [[int(positions[a]), int(positions[b - 1]) + 1] for a, b in zip(starts, stops, strict=True)]


def range_positions(ranges: list[list[int]]) -> np.ndarray:
    """The positions of :func:`row_ranges`' pairs, in order."""
    return np.concatenate([np.arange(int(a), int(b), dtype=np.int64) for a, b in ranges] or [np.zeros(0, np.int64)])


def shown_rows(part: Any) -> Any:
    """A part's rows of its own units (without part 0's rows of no unit), for display; other
    results as they are."""
    shard = part.provenance.get("shard") if hasattr(part, "provenance") else None
    if not shard or "row_ranges" not in shard:
        return part
    from headscope.methods import get_method

    spec = get_method(str(part.provenance.get("analyzer"))).shard
    return part.iloc[own_rows(part, spec, shard["units"], shard["units"], first=False)]


def describe_part(part: Any) -> str | None:
    """``"shard 2/4: 36 of 144 heads"`` for a part, else None."""
    shard = part.provenance.get("shard") if hasattr(part, "provenance") else None
    if not shard:
        return None
    return (f"shard {shard['index']}/{shard['count']}: {len(shard.get('units') or [])} of "
            f"{len(shard.get('all_units') or [])} {shard.get('unit')}s")


def run_units(name: str, model: Any, task: Any, **options: Any) -> tuple[Any, list[Unit]]:
    """The sweep's :class:`ShardSpec` and every unit of this run of method ``name``
    (``circuit:<method>`` for a circuit method); a one-line error if it cannot be sharded."""
    from headscope.plan import plan

    call = plan(name, task, options)
    return call.method.shard, call_units(call, model)


def run_shard(name: str, model: Any, task: Any, shard: Shard, **options: Any) -> Any:
    """Run shard ``shard`` of method ``name`` (``circuit:<method>`` for a circuit method) on a
    built task: :func:`headscope.plan.plan`, then :func:`run_call_shard`."""
    from headscope.plan import plan

    call = plan(name, task, options)
    refuse_unsharded(call.method, "without --shard or a launcher")
    return run_call_shard(call, model, shard)
