"""Evaluating a circuit (``headscope circuit evaluate``): faithfulness, the curve against random
edge sets, completeness and minimality, on any contrastive task.

* **Faithfulness** (Wang et al. 2022; Hanna et al. 2024):
  ``(M(C) - M(corrupted)) / (M(clean) - M(corrupted))`` where ``M(C)`` is the prompt-mean metric
  with every edge outside the circuit ``C`` removed (:mod:`.patched_graph`) and the denominator is
  the full model's clean - corrupted gap (:func:`.prune.faithfulness`).
* **Ablation.** ``corrupted``: a removed edge carries the sender's output on the corrupted prompt
  of the same row (ACDC, Conmy et al. 2023). ``mean``: it carries the mean over the corrupted
  prompts of the sender's output, per position (Wang et al. 2022 mean-ablate over the ABC
  distribution); a head's mean output is taken at its z (``mean_n z_corrupted @ W_O``, the same
  as the mean output where no post-norm follows). Mean ablation needs the prompts' positions to
  line up, so it is refused when the prompts' END positions differ or there is one prompt.
* **Curve**: :func:`.prune.faithfulness_curve` over the table's ``|score|`` ranking, with random
  edge sets of each size as the baseline.
* **Completeness and minimality** on the circuit's nodes (``nodes``: heads and MLPs, or Wang et
  al.'s heads only with the MLPs kept, optionally each head kept at its relevant tokens,
  ``head_positions``): :mod:`.nodes`.
* **Cross-task** (Merullo et al. 2023, "Circuit component reuse"): the circuit may come from
  another task than the one it is evaluated on; the provenance records both.

The circuit is the table's ``circuit`` column, matched to the model's edge graph by
``(sender, receiver, receiver_input)``; edges of the graph missing from the table count as
outside the circuit with score 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from headscope.circuits.exact import EdgeRuns
from headscope.circuits.graph import EdgeGraph
from headscope.errors import HeadscopeError, check_choice
from headscope.patching.engine import RunCache

ABLATIONS = ("corrupted", "mean")
NODE_CHOICES = {
    "components": "heads and MLPs sending along a circuit edge; input and logits always kept",
    "heads": "heads sending along a circuit edge (Wang et al. 2022, Sec. 4; Easy-Transformer completeness.py: mlps_to_remove={}); "
             "MLPs, input and logits always kept; a head is kept or removed at every position (the table has no per-head token; "
             "Wang et al. keep each head at one token, RELEVANT_TOKENS; see head_positions)",
}
HEAD_POSITIONS_TEXT = ("a listed circuit head's node is the head at its listed positions (Wang et al. 2022, RELEVANT_TOKENS): "
                       "F(C\\K) keeps it only there and knocks it out at every other position, F(M\\K) with it in K knocks it "
                       "out only there, F(C\\(K u {v})) knocks v out everywhere; unlisted circuit heads: every position")


def table_masks(table: Any, graph: EdgeGraph, model_name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``(circuit (E,) bool, score (E,) float)`` of an EdgeScores table on ``graph``'s edges."""
    from headscope.results.edge_scores import require_whole_edges

    require_whole_edges(table, "circuit evaluation")
    index = {(e.sender.name, e.receiver.name, e.receiver.input): i for i, e in enumerate(graph.edges)}
    keep = torch.zeros(len(graph.edges), dtype=torch.bool)
    scores = torch.zeros(len(graph.edges))
    for row in pd.DataFrame(table).itertuples(index=False):
        key = (row.sender, row.receiver, row.receiver_input)
        if key not in index:
            made_on = pd.DataFrame(table)["model"].iloc[0] if "model" in table.columns and len(table) else "?"
            raise HeadscopeError(f"edge {key[0]}->{key[1]}<{key[2]}> of the table is not in the graph of {model_name or 'this model'} "
                                 f"(the table was made on {made_on}): evaluate it on the model it was made on.")
        keep[index[key]] = bool(row.circuit)
        score = float(row.score)
        scores[index[key]] = score if score == score else 0.0
    return keep, scores


def check_mean_feasible(batch: Any) -> None:
    """Mean ablation averages over prompts per position: they must share their positions."""
    end = batch.end
    if batch.n < 2:
        raise HeadscopeError("ablation=mean averages over the corrupted prompts: give at least 2 prompts, or use ablation=corrupted.")
    if not bool((end == end[0]).all()):
        raise HeadscopeError("ablation=mean needs prompts whose positions line up (their END positions differ here): "
                             "use ablation=corrupted, or a task whose prompts share one template length.")


def mean_runs(runs: EdgeRuns) -> EdgeRuns:
    """``runs`` with the corrupted values replaced by their mean over prompts, per position.

    Replaces what :func:`.patched_graph.graph_metric` reads: every layer's corrupted ``z``
    (n, pos, H, d) and ``mlp_out`` (n, pos, d_model), and the embedding's difference
    ``deltas["input"]``; the corrupted run's END logits (the baseline of faithfulness) are kept.
    """
    x = runs.corrupted

    def avg(t: torch.Tensor) -> torch.Tensor:
        return t.mean(0, keepdim=True).expand_as(t).contiguous()

    acts = {key: avg(t) if key[0] in ("z", "mlp_out") else t for key, t in x.acts.items()}
    resid0 = avg(x.resid_pre[0])
    corrupted = RunCache(resid_pre={0: resid0}, acts=acts, end_logits=x.end_logits, kv=None)
    deltas = {"input": resid0 - runs.clean.resid_pre[0]}
    return dataclasses.replace(runs, corrupted=corrupted, deltas=deltas, prefix=0)


@dataclass
class CircuitEvaluation:
    """``table``: tidy rows ``quantity, subset, node, K, edges, value, f_a, f_b`` (see
    :func:`evaluate_circuit`); ``provenance``: as for every result."""

    table: pd.DataFrame
    provenance: dict[str, Any]

    def value(self, quantity: str, subset: str = "") -> float:
        rows = self.table[(self.table["quantity"] == quantity) & (self.table["subset"] == subset)]
        if len(rows) != 1:
            raise KeyError(f"{quantity}/{subset}")
        return float(rows["value"].iloc[0])

    def write(self, path: str | Path) -> Path:
        """Parquet (provenance in the schema metadata) or, for ``.json``, ``{"provenance", "rows"}``."""
        import json

        from headscope.results.atomic import atomic_write
        from headscope.results.head_scores import write_parquet

        target = Path(path).expanduser()
        if target.suffix == ".json":
            rows = json.loads(self.table.to_json(orient="records"))
            with atomic_write(target) as tmp:
                Path(tmp).write_text(json.dumps({"provenance": self.provenance, "rows": rows}, indent=1, default=str))
            return target
        return write_parquet(self.table, self.provenance, target)


def _row(quantity: str, value: float, subset: str = "", edges: int = -1, **kw: Any) -> dict[str, Any]:
    base = {"quantity": quantity, "subset": subset, "node": "", "K": "", "edges": edges, "value": float(value),
            "f_a": float("nan"), "f_b": float("nan")}
    return {**base, **kw}


def evaluate_circuit(model: Any, task: Any, table: Any, ablation: str = "corrupted", metric: str = "logit_diff",
                     curve: bool = True, sizes: list[int] | None = None, n_random: int = 3, samples: int = 3,
                     greedy: int = 1, seed: int = 0, source: dict[str, Any] | None = None,
                     reference: Any | None = None, nodes: str = "components", head_positions: str = "") -> CircuitEvaluation:
    """Faithfulness, curve, completeness and minimality of the circuit in ``table`` (module docstring).

    Args:
        model: a :class:`headscope.models.Model`.
        task: a contrastive task (may differ from the one the circuit was found on).
        table: an EdgeScores table; its ``circuit`` column is the circuit, ``score`` the ranking.
        ablation: ``corrupted`` or ``mean``.
        metric: ``logit_diff`` or ``kl``.
        curve: compute the faithfulness curve (top-k by ``|score|`` vs ``n_random`` random sets).
        sizes: curve sizes (default :func:`.prune.default_sizes`).
        samples: random ``K`` for completeness and minimality; ``greedy``: greedy completeness steps.
        seed: seed of the random edge sets and ``K``.
        source: where the circuit came from (file, model, task ...), recorded in the provenance.
        reference: another EdgeScores table, e.g. the evaluated task's own circuit (Merullo et al.
            2023): its faithfulness on the same runs and its overlap with the circuit are added.
        nodes: the nodes of completeness and minimality (:mod:`.nodes`): ``components``
            (default: heads and MLPs, each knocked out at every position) or ``heads`` (Wang et
            al. 2022, Sec. 4: attention heads only, MLPs never knocked out; each head kept or
            knocked out at every position, the table having no per-head token).
        head_positions: with ``nodes="heads"``, circuit heads' relevant tokens, e.g.
            ``"9.6@END,3.0@S2,2.2@S1+1"`` (:func:`.nodes.parse_head_positions`): a listed head is
            kept in ``F(C \\ K)`` only at its positions (knocked out at every other one), and
            knocked out in ``F(M \\ K)`` only there; unlisted heads: every position (default).

    Returns:
        A :class:`CircuitEvaluation`. Rows: ``metric`` (subsets ``clean``, ``corrupted``,
        ``circuit``), ``faithfulness``, ``curve`` (``subset`` ``top``/``random_mean``/``random_std``,
        ``edges`` = k), ``incompleteness`` and ``minimality`` (:mod:`.nodes`; ``f_a``, ``f_b``
        the two ``F`` values), ``nodes`` (the circuit's node count); with ``reference``:
        ``faithfulness`` / ``reference`` and ``overlap`` (``edges``, ``nodes``: value the Jaccard
        index, ``f_a`` the intersection, ``f_b`` the union size).
    """
    from headscope.circuits.methods import setup
    from headscope.circuits.nodes import (
        NodeKnockout,
        check_nodes,
        circuit_nodes,
        completeness_rows,
        head_position_masks,
        minimality_rows,
        parse_head_positions,
        position_text,
    )
    from headscope.circuits.patched_graph import graph_metric
    from headscope.circuits.prune import default_sizes, faithfulness, faithfulness_curve
    from headscope.results import build_provenance

    check_choice("ablation", ablation, ABLATIONS)
    check_nodes(nodes)
    spec = parse_head_positions(head_positions, nodes)
    for name, v in (("n_random", n_random), ("samples", samples), ("greedy", greedy)):
        if v < 0:
            raise HeadscopeError(f"{name} must be >= 0; got {v}.")
    batch, engine, graph, runs = setup(model, task, metric)
    keep, scores = table_masks(table, graph, getattr(model, "spec", ""))
    if not bool(keep.any()):
        raise HeadscopeError("the table's circuit is empty (no row has circuit=True): rerun `headscope circuit` "
                             "with -o top_edges=N or -o threshold=T.")
    node_names = circuit_nodes(graph, keep, nodes)
    info = task.describe()
    keep_at = head_position_masks(spec, batch, graph, node_names, getattr(model, "spec", ""), str(info.get("name", "")))
    if ablation == "mean":
        check_mean_feasible(batch)
        runs = mean_runs(runs)
    clean, corrupted = float(runs.clean_metric.mean()), float(runs.corrupted_metric.mean())
    rows = [_row("metric", clean, "clean"), _row("metric", corrupted, "corrupted"),
            _row("metric", float(graph_metric(engine, runs, graph, ~keep).mean()), "circuit", int(keep.sum())),
            _row("faithfulness", faithfulness(engine, runs, graph, keep), "circuit", int(keep.sum()))]
    if curve:
        sizes = default_sizes(len(graph.edges)) if sizes is None else sorted({int(s) for s in sizes})
        bad = [s for s in sizes if not 0 <= s <= len(graph.edges)]
        if bad:
            raise HeadscopeError(f"curve sizes must be between 0 and the {len(graph.edges)} edges; got {bad}.")
        for point in faithfulness_curve(engine, runs, graph, scores, sizes, n_random=n_random, seed=seed):
            for sub, key in (("top", "faithfulness"), ("random_mean", "random_mean"), ("random_std", "random_std")):
                rows.append(_row("curve", point[key], sub, point["edges"]))
    if reference is not None:
        from headscope.circuits.overlap import circuit_overlap

        ref_keep, _ = table_masks(reference, graph, getattr(model, "spec", ""))
        rows.append(_row("faithfulness", faithfulness(engine, runs, graph, ref_keep), "reference", int(ref_keep.sum())))
        ov = circuit_overlap(table, reference)
        for part in ("edges", "nodes"):
            rows.append(_row("overlap", ov[part]["jaccard"], part, f_a=float(ov[part]["both"]), f_b=float(ov[part]["union"])))
    f = NodeKnockout(engine, runs, graph, nodes, keep_at=keep_at)
    rows.append(_row("nodes", len(node_names), "circuit", K=",".join(node_names)))
    rows += [{**_row("", 0.0, edges=-1), **r} for r in completeness_rows(f, node_names, samples, greedy, seed)]
    rows += [{**_row("", 0.0, edges=-1), **r} for r in minimality_rows(f, node_names, samples, seed)]
    out = pd.DataFrame(rows, columns=["quantity", "subset", "node", "K", "edges", "value", "f_a", "f_b"])
    src = dict(source or {})
    choices = {
        "faithfulness": "(M(C) - M(corrupted)) / (M(clean) - M(corrupted)), every edge outside C removed (patched_graph)",
        "ablation": ("sender's corrupted output, same row" if ablation == "corrupted"
                     else "mean over the corrupted prompts of the sender's output, per position (heads at z)"),
        "nodes": NODE_CHOICES[nodes],
        "knockout": ("F(X): every edge leaving a head/MLP outside X removed (= its output set to the ablated value), at every position"
                     if nodes == "components" else
                     "F(X): every edge leaving a head outside X removed (= its z set to the ablated value) at every position; MLPs never removed"
                     + ("; a head of head_positions: its z set to the ablated value only at the positions where it is knocked out"
                        if spec else "")),
        "head_positions": ({node: [position_text(*p) for p in places] for node, places in spec.items()} if spec else
                           "none: every circuit head kept or knocked out at every position"),
        **({"head_positions_rule": HEAD_POSITIONS_TEXT} if spec else {}),
        "K_sampling": f"K = {{}}, {samples} random subsets (each node p=1/2, seed {seed}), greedy for {greedy} steps; "
                      "Wang et al. 2022 used mean ablation over ABC and hand-chosen K",
        "clean_metric": clean, "corrupted_metric": corrupted, "n_edges": len(graph.edges),
        "circuit_edges": int(keep.sum()), "knockout_runs": f.calls,
        "circuit": src,
        "cross_task": bool(src.get("task")) and src.get("task") != info.get("name"),
    }
    prov = build_provenance(model, task=info, analyzer="circuit_evaluate",
                            options={"ablation": ablation, "metric": metric, "curve": curve, "sizes": sizes,
                                     "n_random": n_random, "samples": samples, "greedy": greedy, "seed": seed,
                                     "nodes": nodes, "head_positions": head_positions},
                            choices=choices, seed=info.get("seed"))
    return CircuitEvaluation(out, prov)
