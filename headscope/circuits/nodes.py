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
refused, :func:`headscope.results.edge_scores.require_whole_edges`), so by default a node is the
head at **every** position: kept at all positions or knocked out at all positions, in
``F(C \\ K)`` and ``F(M \\ K)`` alike (Wang et al.'s scheme with each head's relevant set = all
positions). ``head_positions`` (``nodes=heads`` only, :func:`parse_head_positions`) gives circuit
heads their relevant tokens, ``HEAD@POSITION`` entries such as ``9.6@END,3.0@S2,2.2@S1+1`` (the
task's named positions, per prompt, with an optional ``+k`` / ``-k``; a head listed more than once
has several). A listed head's node is the head at its listed positions, as in Wang et al.:
``F(C \\ K)`` keeps it only there and knocks it out at every other position, ``F(M \\ K)`` with it
in ``K`` knocks it out only there (``M`` holds the head's other positions apart, as
``{head}@other``, never in ``K``), and ``F(C \\ (K u {v}))`` knocks ``v`` out everywhere. An
unlisted circuit head keeps the default (every position).

**Knock-out.** ``F(X)``, for a node set ``X``, is the prompt-mean task metric of the model in
which only the components in ``X`` (and the embedding) are kept: every edge leaving a head or
MLP outside ``X`` (with ``nodes=heads``: every head outside ``X``) is patched to the corrupted run
(:mod:`.patched_graph`, the same edge patching the circuit's faithfulness uses, ablation
``corrupted`` or ``mean``). Removing every outgoing edge of a node is the same as replacing the
node's output by its corrupted output for every reader, so ``F(X)`` is the clean run with the z of
each head outside ``X`` (and the output of each MLP outside ``X``) set to its corrupted value;
``tests/conformance/test_circuit_eval.py`` checks it against exactly that, written with raw
Hugging Face hooks. A head knocked out at some positions only (``head_positions``) has every
outgoing edge removed with its output difference zeroed where it is kept, which is its z set to
its corrupted value at the other positions only (``graph_metric(sender_masks=)``). Wang et al. knock nodes out by
**mean ablation over the ABC distribution** instead (``ablation=mean`` here is the closest: the
per position mean of the corrupted prompts' sender outputs). On post-norm families (Gemma-2/3,
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

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.patched_graph import graph_metric
from headscope.errors import HeadscopeError, check_choice, suggest
from headscope.patching.engine import PatchEngine

NODE_KINDS = ("components", "heads")
"""``nodes`` values: ``components`` (heads and MLPs are nodes) or ``heads`` (Wang et al.: heads only, MLPs always kept)."""


def check_nodes(nodes: str) -> str:
    """``nodes`` itself, or a one-line HeadscopeError naming the choices."""
    return check_choice("nodes", nodes, NODE_KINDS, "components (heads and MLPs, default) or heads (Wang et al. 2022: "
                        "attention heads only, MLPs never knocked out)")


OTHER = "@other"
"""Suffix of a listed head's other positions in ``M`` (module docstring, Positions)."""

_ENTRY = re.compile(r"^(\d+)\.(\d+)@([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(\d+))?$")
HEAD_POSITIONS_SYNTAX = ("write HEAD@POSITION entries separated by commas, heads as LAYER.HEAD, positions as the task's "
                         "named positions with an optional +k/-k, e.g. -o head_positions=9.6@END,3.0@S2,2.2@S1+1")


def parse_head_positions(text: str, nodes: str = "heads") -> dict[str, list[tuple[str, int]]]:
    """``"9.6@END,3.0@S2,2.2@S1+1"`` -> ``{"a9.h6": [("END", 0)], "a3.h0": [("S2", 0)],
    "a2.h2": [("S1", 1)]}`` (a head listed twice gets both positions; ``""`` -> ``{}``).

    Checks the syntax and that ``nodes`` is ``heads``, before any model loads; the heads and
    position names are checked against the model and task by :func:`head_position_masks`.
    """
    check_nodes(nodes)
    out: dict[str, list[tuple[str, int]]] = {}
    for item in str(text).split(","):
        entry = "".join(item.split())
        if not entry:
            continue
        m = _ENTRY.match(entry)
        if m is None:
            raise HeadscopeError(f"cannot parse '{item.strip()}' in -o head_positions: {HEAD_POSITIONS_SYNTAX}.")
        layer, head, name, sign, k = m.groups()
        offset = 0 if sign is None else int(k) * (1 if sign == "+" else -1)
        spot = out.setdefault(f"a{int(layer)}.h{int(head)}", [])
        if (name, offset) not in spot:
            spot.append((name, offset))
    if out and nodes != "heads":
        raise HeadscopeError("head_positions needs -o nodes=heads (Wang et al.'s head nodes, each kept at its relevant "
                             "tokens); with nodes=components every head and MLP is kept or knocked out at every position.")
    return out


def position_text(name: str, offset: int) -> str:
    """``("S1", 1)`` -> ``"S1+1"``."""
    return name if offset == 0 else f"{name}{offset:+d}"


def _head_text(node: str) -> str:
    layer, head = node[1:].split(".h")
    return f"{layer}.{head}"


def head_position_masks(spec: dict[str, list[tuple[str, int]]], batch: Any, graph: EdgeGraph, circuit: list[str],
                        model_name: str = "", task_name: str = "") -> dict[str, torch.Tensor]:
    """Each listed head's positions as an (n, pos) bool mask of ``batch``'s prompts (True = kept).

    One-line errors for a head not in the model or not a head of the circuit, a position name
    the task does not have (or a task with no named positions but END), and a position that
    falls outside a prompt.
    """
    heads = all_nodes(graph, "heads")
    names = list(batch.positions)
    n, width = batch.clean.shape
    task = f"task '{task_name}'" if task_name else "the task"
    out: dict[str, torch.Tensor] = {}
    for node, places in spec.items():
        if node not in heads:
            layers = 1 + max(int(h[1:].split(".h")[0]) for h in heads)
            per = len(heads) // layers
            raise HeadscopeError(f"head_positions lists head {_head_text(node)}, which {model_name or 'this model'} does not "
                                 f"have (layers 0..{layers - 1}, heads 0..{per - 1} per layer).")
        if node not in circuit:
            raise HeadscopeError(f"head_positions lists head {_head_text(node)} ({node}), which is not a head of the circuit "
                                 f"(its heads: {', '.join(circuit) or 'none'}): list circuit heads only.")
        mask = torch.zeros(n, width, dtype=torch.bool)
        for name, offset in places:
            where = f"{_head_text(node)}@{position_text(name, offset)}"
            if name not in names:
                if names == ["END"]:
                    raise HeadscopeError(f"head_positions {where}: {task} has no named positions but END; "
                                         "use END (e.g. END-1) or a task with named positions (e.g. ioi: IO, S1, S2, END).")
                raise HeadscopeError(f"unknown position '{name}' in head_positions {where}.{suggest(name, names)} "
                                     f"{task[0].upper()}{task[1:]} names {', '.join(names)} (with an optional +k/-k, e.g. {names[0]}+1).")
            at = batch.positions[name].cpu() + offset
            bad = ((at < 0) | (at >= width)).nonzero().flatten().tolist()
            if bad:
                raise HeadscopeError(f"head_positions {where} falls outside prompt {bad[0]} (position {int(at[bad[0]])}; "
                                     f"the prompts have positions 0..{width - 1}).")
            mask[torch.arange(n), at] = True
        out[node] = mask
    return out


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
        keep_at: head -> (n, pos) bool mask of its relevant positions (``head_positions``,
            :func:`head_position_masks`): the node ``head`` is the head there, and ``M`` holds the
            head's other positions as the node ``{head}@other``; heads not in it are nodes at
            every position.
        calls: number of patched-graph runs made (memoised values are not rerun).
    """

    engine: PatchEngine
    runs: EdgeRuns
    graph: EdgeGraph
    nodes: str = "components"
    keep_at: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: int = 0
    _memo: dict[frozenset[str], float] = field(default_factory=dict)

    @property
    def universe(self) -> list[str]:
        """``M``: every node, then ``{head}@other`` for each head of ``keep_at``."""
        return [*all_nodes(self.graph, self.nodes), *(f"{h}{OTHER}" for h in self.keep_at)]

    def knockouts(self, removed: Iterable[str]) -> tuple[set[str], dict[str, torch.Tensor]]:
        """(components knocked out at every position, head -> (n, pos) mask of the positions where
        it alone is knocked out) for the removed nodes ``removed``."""
        removed = set(removed)
        everywhere: set[str] = set()
        partial: dict[str, torch.Tensor] = {}
        for name in all_nodes(self.graph, self.nodes):
            at = self.keep_at.get(name)
            if at is None:
                if name in removed:
                    everywhere.add(name)
                continue
            knock = (at if name in removed else torch.zeros_like(at)) | (~at if f"{name}{OTHER}" in removed else torch.zeros_like(at))
            if bool(knock.all()):
                everywhere.add(name)
            elif bool(knock.any()):
                partial[name] = knock
        return everywhere, partial

    def __call__(self, kept: Iterable[str]) -> float:
        kept = set(kept)
        removed = frozenset(n for n in self.universe if n not in kept)
        if removed not in self._memo:
            everywhere, partial = self.knockouts(removed)
            mask = torch.tensor([e.sender.name in everywhere or e.sender.name in partial for e in self.graph.edges],
                                dtype=torch.bool)
            metric = graph_metric(self.engine, self.runs, self.graph, mask, sender_masks=partial or None)
            self._memo[removed] = float(metric.mean())
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
    fm = f([n for n in f.universe if n not in k])
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
