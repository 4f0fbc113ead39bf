"""Cheapest cut of a sorted sequence into contiguous groups (an exact O(m^2) dynamic programme).

Used to batch patched runs: rows sorted by END position (:meth:`PatchEngine.end_groups`) and edges
sorted by the block their patched run starts at (:func:`headscope.circuits.exact.start_groups`),
where one forward's cost depends on the group's first and last value and its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def cheapest_cuts(counts: Sequence[int], group_cost: Callable[[int, int, int], float]) -> list[tuple[int, int]]:
    """Contiguous groups ``[i, j)`` of ``m = len(counts)`` sorted values minimising the summed cost.

    Args:
        counts: how many items share each distinct value, in increasing value order.
        group_cost: ``(i, j, items)`` -> cost of one group holding values ``i .. j-1`` and
            ``items`` = ``sum(counts[i:j])`` items.

    Returns:
        ``(i, j)`` bounds covering ``0..m`` in increasing order.
    """
    m = len(counts)
    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        items = 0
        for i in range(j, 0, -1):  # the last group is values[i-1 .. j-1]
            items += counts[i - 1]
            cost = best[i - 1] + group_cost(i - 1, j, items)
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds = []
    j = m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return bounds[::-1]
