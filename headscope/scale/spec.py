"""How an analyzer's sweep splits into independent units (one :class:`ShardSpec` per analyzer).

A sweep analyzer scores many units that do not depend on each other: layers or heads for
activation patching, sender heads for path patching, ablated heads for Ships, needle trials for
retrieval heads. Its :class:`ShardSpec` (given to :func:`headscope.analyzers.register_analyzer`
as ``shard=``) says

- ``units(model, task, options)``: every unit of the run, in a fixed order;
- ``restrict(units)``: the analyzer options that make it compute only those units (its existing
  ``layers``/``heads``/``senders``/``trials`` option), so a shard is an ordinary analyzer call;
- which output rows belong to which unit (``row_units``): a part keeps only its units' rows, and
  the merge puts every part's rows back in place; or, for analyzers whose rows pool units (retrieval
  heads: prompt-weighted means), no ``row_units`` (a part keeps every row) and a custom ``merge``.

Nothing here knows about ranks or files: see :mod:`headscope.scale.shard` (splitting and running
one shard), :mod:`headscope.scale.merge` and :mod:`headscope.scale.dist` (torch.distributed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

Unit = int | tuple[int, int]


def unit_key(unit: Any) -> Unit:
    """A unit as a hashable value: JSON gives ``[layer, head]`` back as a list."""
    if isinstance(unit, list | tuple):
        return (int(unit[0]), int(unit[1]))
    return int(unit)


@dataclass(frozen=True)
class ShardSpec:
    """How one analyzer splits into units and merges back (see the module docstring).

    Attributes:
        unit: what one unit is, for messages and provenance (``"layer"``, ``"head"``, ...).
        options: the analyzer options ``restrict`` sets; each part's provenance keeps the
            run's own values of them, so parts of one run agree.
        units: ``(model, task, options) -> [unit, ...]`` every unit of the run.
        restrict: ``[unit, ...] -> {option: value}`` the options that compute only those units.
        row_units: ``frame -> [unit or None per row]``: the unit each output row belongs to
            (None: a row no unit computes, e.g. a layer outside ``layers``). Given, a part holds
            only its units' rows (part 0 also the rows of no unit), and the merge rebuilds the
            whole table from them; a ``merge`` given as well receives such parts (``exact``'s
            rebuilds the table with :func:`headscope.scale.merge.merge_by_rows` first).
        merge: ``[part, ...] (shard order) -> HeadScores`` for analyzers whose rows pool units.
    """

    unit: str
    options: tuple[str, ...]
    units: Callable[[Any, Any, dict[str, Any]], list[Unit]]
    restrict: Callable[[list[Unit]], dict[str, Any]]
    row_units: Callable[[pd.DataFrame], list[Unit]] | None = None
    merge: Callable[[list[Any]], Any] | None = None


def heads_text(heads: Sequence[tuple[int, int]]) -> str:
    """``[(9, 6), (10, 0)]`` -> ``"9.6,10.0"`` (the CLI's head-list syntax)."""
    return ",".join(f"{layer}.{head}" for layer, head in heads)


def by_layer(option: str = "layers") -> ShardSpec:
    """Units are layers, restricted through the analyzer's ``option`` (a list of layers, None = all)."""

    def units(model: Any, task: Any, options: dict[str, Any]) -> list[Unit]:
        chosen = options.get(option)
        return sorted({int(x) for x in chosen}) if chosen is not None else list(range(model.n_layers))

    return ShardSpec(
        unit="layer",
        options=(option,),
        units=units,
        restrict=lambda mine: {option: [int(u) for u in mine]},  # type: ignore[arg-type]
        row_units=lambda frame: [int(x) for x in frame["layer"]],
    )


def by_head(units: Callable[[Any, Any, dict[str, Any]], list[tuple[int, int]]], option: str = "heads",
            clears: tuple[str, ...] = (), unit: str = "head") -> ShardSpec:
    """Units are (layer, head) pairs, restricted through ``option`` (``"L.H,..."`` text).

    Args:
        units: every head of the run from ``(model, task, options)``.
        clears: other options that select heads (e.g. ``layers``), set to None in a shard.
    """
    return ShardSpec(
        unit=unit,
        options=(option, *clears),
        units=lambda model, task, options: [(int(a), int(b)) for a, b in units(model, task, options)],
        restrict=lambda mine: {option: heads_text(mine), **dict.fromkeys(clears)},  # type: ignore[arg-type]
        row_units=lambda frame: [(int(a), int(b)) for a, b in zip(frame["layer"], frame["head"], strict=True)],
    )
