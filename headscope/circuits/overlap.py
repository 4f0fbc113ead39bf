"""Comparing two edge circuits (Merullo et al. 2023, "Circuit component reuse across tasks in
transformer language models": the IOI circuit's components against a second task's).

* **Edge overlap**: the circuit edges of A and B as sets of ``(sender, receiver, receiver_input)``:
  sizes, intersection and Jaccard index ``|A n B| / |A u B|``.
* **Node overlap**: the same for their nodes, the heads and MLPs that send along a circuit edge
  (the node definition of :mod:`.nodes`).
* **Score agreement**: Spearman rank correlation of the two ``score`` columns over the edges both
  tables have (average ranks for ties, :func:`headscope.stats.spearman`).

Cross-task faithfulness (A's circuit on B's task, next to B's own circuit) is
``headscope circuit evaluate A.parquet --task B`` (:mod:`.evaluate`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

KEY = ["sender", "receiver", "receiver_input"]


def circuit_edge_set(table: Any) -> set[tuple[str, str, str]]:
    """The circuit's edges, as ``(sender, receiver, receiver_input)`` tuples."""
    frame = pd.DataFrame(table)
    frame = frame[frame["circuit"].astype(bool)]
    return set(zip(frame["sender"], frame["receiver"], frame["receiver_input"], strict=True))


def edge_set_nodes(edges: set[tuple[str, str, str]]) -> set[str]:
    """Heads and MLPs sending along one of ``edges`` (the embedding ``input`` is not a node)."""
    return {s for s, _, _ in edges if s != "input"}


def _sets(a: set[Any], b: set[Any]) -> dict[str, Any]:
    union = a | b
    return {"a": len(a), "b": len(b), "both": len(a & b), "union": len(union),
            "jaccard": len(a & b) / len(union) if union else float("nan")}


def circuit_overlap(a: Any, b: Any) -> dict[str, Any]:
    """Edge and node overlap and score agreement of two EdgeScores tables (module docstring).

    Returns:
        ``{"edges": {a, b, both, union, jaccard}, "nodes": {...}, "nodes_both": [...],
        "edges_only_a": [...], "edges_only_b": [...], "shared_edges": n, "spearman": rho}``.
    """
    from headscope.results.edge_scores import require_whole_edges
    from headscope.stats import spearman

    require_whole_edges(a, "circuit comparison")
    require_whole_edges(b, "circuit comparison")
    ea, eb = circuit_edge_set(a), circuit_edge_set(b)
    na, nb = edge_set_nodes(ea), edge_set_nodes(eb)
    merged = pd.DataFrame(a)[[*KEY, "score"]].merge(pd.DataFrame(b)[[*KEY, "score"]], on=KEY, suffixes=("_a", "_b"))
    fmt = lambda e: f"{e[0]}->{e[1]}<{e[2]}>"  # noqa: E731
    return {
        "edges": _sets(ea, eb),
        "nodes": _sets(na, nb),
        "nodes_both": sorted(na & nb),
        "edges_only_a": sorted(map(fmt, ea - eb)),
        "edges_only_b": sorted(map(fmt, eb - ea)),
        "shared_edges": len(merged),
        "spearman": spearman(merged["score_a"].to_numpy(dtype=float), merged["score_b"].to_numpy(dtype=float))
        if len(merged) else float("nan"),
    }


def describe(table: Any) -> str:
    """``model/task/method`` of an EdgeScores table (first row)."""
    row = pd.DataFrame(table).iloc[0] if len(table) else {}
    return "/".join(str(row.get(c, "?")) for c in ("model", "task", "method"))

