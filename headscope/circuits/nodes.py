"""Completeness and minimality of a circuit on its nodes (Wang et al. 2022, "Interpretability in
the Wild", Sec. 4.1-4.3).

**Nodes** (``nodes``). ``components`` (default): the nodes of an edge circuit ``C`` are the heads
``a{l}.h{h}`` and MLPs ``m{l}`` that send along at least one circuit edge (:func:`circuit_nodes`),
and the full model ``M`` is every head and MLP. ``heads``: Wang et al.'s nodes, attention heads
only: ``C``'s nodes are the heads sending along a circuit edge, ``M`` is every head, and MLPs are
never knocked out (``redwoodresearch/Easy-Transformer``, ``easy_transformer/completeness.py``
calls ``do_circuit_extraction(heads_to_keep=..., mlps_to_remove={})`` for ``F(C \\ K)`` and
``do_circuit_extraction(heads_to_remove=..., mlps_to_remove={})`` for ``F(M \\ K)``). A component
that only receives circuit edges is not a node: every edge leaving it is outside ``C``, so it
changes nothing in the circuit's run. The embedding (``input``) and the logits are always kept.

**Positions.** Wang et al.'s node is a head at one token: ``ioi_circuit_extraction.py``'s
``RELEVANT_TOKENS`` keeps name movers, negative and S-inhibition heads at ``end``, induction and
duplicate-token heads at ``S2``, previous-token heads at ``S+1``; ``process_heads_and_mlps`` /
``turn_keep_into_rmv`` knock every other head, and a circuit head at every other position, out
(``F(C \\ K)``), and ``heads_to_remove`` knocks the heads of ``K`` out only at their relevant token
(``F(M \\ K)``). headscope's edge circuits have no per-head token (a position-resolved table is
refused, :func:`headscope.results.edge_scores.require_whole_edges`), so here a node is the head at
**every** position: kept at all positions or knocked out at all positions, in ``F(C \\ K)`` and
``F(M \\ K)`` alike (Wang et al.'s scheme with each head's relevant set = all positions).

**Knock-out.** ``F(X)``, for a node set ``X``, is the prompt-mean task metric of the model in
which only the components in ``X`` (and the embedding) are kept: every edge leaving a head or
MLP outside ``X`` (with ``nodes=heads``: every head outside ``X``) is patched to the corrupted run (:mod:`.patched_graph`, the same edge patching
the circuit's faithfulness uses, ablation ``corrupted`` or ``mean``). Removing every outgoing
edge of a node is the same as replacing the node's output by its corrupted output for every
reader, so ``F(X)`` is the clean run with the z of each head outside ``X`` (and the output of each
MLP outside ``X``) set to its corrupted value; ``tests/conformance/test_circuit_eval.py`` checks it
against exactly that, written with raw Hugging Face hooks. Wang et al. knock nodes out by **mean
ablation over the ABC distribution** instead (``ablation=mean`` here is the closest: the per
position mean of the corrupted prompts' sender outputs). On post-norm families (Gemma-2/3,
OLMo-2) several heads of one layer knocked out add their per-head output differences (each taken
with the other heads clean, :mod:`.exact`), which is not the joint z patch there.

**Completeness** (Sec. 4.2): for ``K`` a subset of ``C``, the incompleteness score is
``|F(C \\ K) - F(M \\ K)|``; a complete circuit has a small score for every ``K``.
**Minimality** (Sec. 4.3): for each ``v`` in ``C`` and a ``K`` in ``C \\ {v}``, the score
``|F(C \\ (K u {v})) - F(C \\ K)|``; a minimal circuit has some ``K`` with a large score for every
``v``.

**Which K.** Wang et al. pick ``K`` by hand (whole classes of heads, and for minimality one
hand-chosen ``K`` per head), besides the empty set, random subsets and a greedy search. Here the
choice is automatic and seeded:

* completeness: ``K = {}``; ``samples`` random subsets, each node of ``C`` in ``K`` with
  probability 1/2 (``torch.Generator`` seeded with ``seed``); and a greedy search of ``greedy``
  steps, each adding the node of ``C \\ K`` that maximises the score (``2 |C \\ K|`` runs per step);
* minimality: for each ``v``, ``K = {}`` and ``samples`` random subsets of ``C \\ {v}`` (each node
  with probability 1/2, same generator).

Each ``F`` is one patched-graph run; values are memoised per removed-node set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.patched_graph import graph_metric
from headscope.errors import HeadscopeError
from headscope.patching.engine import PatchEngine

NODE_KINDS = ("components", "heads")
"""``nodes`` values: ``components`` (heads and MLPs are nodes) or ``heads`` (Wang et al.: heads only, MLPs always kept)."""


def check_nodes(nodes: str) -> str:
    """``nodes`` itself, or a one-line HeadscopeError naming the choices."""
    if nodes not in NODE_KINDS:
        raise HeadscopeError(f"nodes must be components (heads and MLPs, default) or heads (Wang et al. 2022: "
                             f"attention heads only, MLPs never knocked out); got '{nodes}'.")
    return nodes


def _is_node(kind: str, nodes: str) -> bool:
    return kind == "head" if nodes == "heads" else kind != "input"


def circuit_nodes(graph: EdgeGraph, keep: torch.Tensor, nodes: str = "components") -> list[str]:
    """The heads and MLPs (``nodes="heads"``: the heads) that send along an edge where ``keep`` (E,)
    is True, in residual order."""
    sending = {e.sender.name for e, k in zip(graph.edges, keep.tolist(), strict=True) if k}
    return [s.name for s in graph.senders if _is_node(s.kind, check_nodes(nodes)) and s.name in sending]


def all_nodes(graph: EdgeGraph, nodes: str = "components") -> list[str]:
    """Every head and MLP of the graph (``nodes="heads"``: every head), the full model ``M``."""
    return [s.name for s in graph.senders if _is_node(s.kind, check_nodes(nodes))]


@dataclass
class NodeKnockout:
    """``F(X)``: the prompt-mean metric with only the nodes in ``X`` kept (module docstring).

    Attributes:
        engine, runs, graph: the patching setup (``runs`` carries the corrupted or mean values).
        nodes: ``components`` or ``heads`` (module docstring): which components can be knocked
            out; with ``heads`` the MLPs are always kept.
        calls: number of patched-graph runs made (memoised values are not rerun).
    """

    engine: PatchEngine
    runs: EdgeRuns
    graph: EdgeGraph
    nodes: str = "components"
    calls: int = 0
    _memo: dict[frozenset[str], float] = field(default_factory=dict)

    def __call__(self, kept: Iterable[str]) -> float:
        kept = set(kept)
        removed = frozenset(n for n in all_nodes(self.graph, self.nodes) if n not in kept)
        if removed not in self._memo:
            mask = torch.tensor([e.sender.name in removed for e in self.graph.edges], dtype=torch.bool)
            self._memo[removed] = float(graph_metric(self.engine, self.runs, self.graph, mask).mean())
            self.calls += 1
        return self._memo[removed]


def _random_subsets(items: list[str], samples: int, gen: torch.Generator) -> list[list[str]]:
    """``samples`` subsets of ``items``, each item in with probability 1/2."""
    out = []
    for _ in range(samples):
        pick = torch.rand(len(items), generator=gen) < 0.5
        out.append([n for n, p in zip(items, pick.tolist(), strict=True) if p])
    return out


def incompleteness(f: NodeKnockout, circuit: list[str], k: Iterable[str]) -> tuple[float, float, float]:
    """``(|F(C \\ K) - F(M \\ K)|, F(C \\ K), F(M \\ K))``."""
    k = set(k)
    fc = f([n for n in circuit if n not in k])
    fm = f([n for n in all_nodes(f.graph, f.nodes) if n not in k])
    return abs(fc - fm), fc, fm


def minimality_score(f: NodeKnockout, circuit: list[str], v: str, k: Iterable[str]) -> tuple[float, float, float]:
    """``(|F(C \\ (K u {v})) - F(C \\ K)|, F(C \\ (K u {v})), F(C \\ K)``."""
    k = set(k)
    without = f([n for n in circuit if n not in k and n != v])
    base = f([n for n in circuit if n not in k])
    return abs(without - base), without, base


def completeness_rows(f: NodeKnockout, circuit: list[str], samples: int = 3, greedy: int = 1,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Incompleteness for ``K = {}``, random ``K`` and greedy ``K`` (module docstring).

    Returns:
        one row per ``K``: ``{"quantity": "incompleteness", "subset", "K", "value", "f_a" (F(C\\K)),
        "f_b" (F(M\\K))}``; ``subset`` is ``empty``, ``random{i}`` or ``greedy{step}``.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []

    def row(label: str, k: list[str]) -> dict[str, Any]:
        value, fc, fm = incompleteness(f, circuit, k)
        return {"quantity": "incompleteness", "subset": label, "node": "", "K": ",".join(k), "value": value,
                "f_a": fc, "f_b": fm}

    rows.append(row("empty", []))
    for i, k in enumerate(_random_subsets(circuit, samples, gen)):
        rows.append(row(f"random{i}", k))
    chosen: list[str] = []
    for step in range(min(greedy, len(circuit))):
        rest = [n for n in circuit if n not in chosen]
        best = max(rest, key=lambda n: incompleteness(f, circuit, [*chosen, n])[0])
        chosen.append(best)
        rows.append(row(f"greedy{step + 1}", list(chosen)))
    return rows


def minimality_rows(f: NodeKnockout, circuit: list[str], samples: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Minimality of every node for ``K = {}`` and ``samples`` random ``K`` (module docstring).

    Returns:
        one row per (node, K): ``{"quantity": "minimality", "node", "subset", "K", "value",
        "f_a" (F(C\\(K u {v}))), "f_b" (F(C\\K))}``.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for v in circuit:
        others = [n for n in circuit if n != v]
        for label, k in [("empty", []), *((f"random{i}", k) for i, k in enumerate(_random_subsets(others, samples, gen)))]:
            value, without, base = minimality_score(f, circuit, v, k)
            rows.append({"quantity": "minimality", "subset": label, "node": v, "K": ",".join(k), "value": value,
                         "f_a": without, "f_b": base})
    return rows
