"""Circuit methods, registered by name like analyzers (``headscope circuit --method NAME``).

Contract: ``method(model: Model, task: Task, **options) -> EdgeScores``. Options are typed by
the method's annotations (:mod:`headscope.params`), presets expand as for analyzers, and every
method records its choices in the result's provenance.

Built in:

* ``eap``: edge attribution patching (Syed et al. 2023), :mod:`.attribution` with ``steps=1``;
* ``eap_ig``: EAP-IG (Hanna et al. 2024), ``steps`` (default 5), input or activation
  interpolation, logit-difference or KL metric;
* ``exact``: exact edge patching of every edge (:mod:`.exact`), the reference the others
  estimate (one batched forward per group of edges; use it on small models). The one method
  that splits into shards (``--shard I/N``, torchrun): units are receiver blocks
  (:mod:`.sharding`);
* ``composition`` / ``composition_svd``: weight-based head composition scores (:mod:`.composition`)
  and their split into the writer's rank-1 SVD components (:mod:`.composition_svd`; one row per
  (edge, component), column ``component``);
* ``verified``: EAP-IG ranking, exact verification of the top edges and greedy pruning
  (:mod:`.prune`).

The circuit flag: the ``top_edges`` edges with the largest ``|score|``, or all edges with
``|score| >= threshold`` when a threshold is given (edges not scored, NaN, are never in it). With
``positions=each`` (``eap``, ``eap_ig``) the table has one row per (edge, token position) with an
integer ``position`` column, and the flag ranks those rows (``top_edges`` rows, which may share an edge).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from headscope.circuits.sharding import EXACT_SHARDS
from headscope.errors import HeadscopeError
from headscope.methods import KindView, MethodInfo, get_method, load_builtins, register_method
from headscope.tasks.protocols import ContrastiveTask

CIRCUIT_METHODS = KindView("edges")


def register_circuit_method(name: str, summary: str, presets: Mapping[str, Mapping[str, Any]] | None = None,
                            shard: Any = None, requires: type | tuple[type, ...] = ContrastiveTask,
                            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn(model, task, **options) -> EdgeScores`` under ``name``
    (:func:`headscope.methods.register_method` with ``kind="edges"``).

    Args:
        shard: a :class:`headscope.scale.spec.ShardSpec` if the method splits into independent
            units (``--shard I/N``, torchrun; its provenance name is ``circuit:<name>``).
        requires: the task contract(s) it needs (:mod:`headscope.tasks.protocols`); by default
            a contrastive task (the edge graph's clean and corrupted runs), ``()`` for any task.
    """
    return register_method(name, summary, kind="edges", requires=requires, presets=presets, shard=shard)


def load_builtin_methods() -> None:
    """Register the built-in methods (kept for this release: :func:`headscope.methods.load_builtins`)."""
    load_builtins()


def get_circuit_method(name: str) -> MethodInfo:
    return get_method(name, kind="edges")


def run_circuit_method(name: str, model: Any, task: Any, **options: Any) -> Any:
    """Run a registered circuit method on a built task: :func:`headscope.plan.plan` then
    :func:`headscope.plan.run` (options checked by name and type, the task by its contract)."""
    from headscope.plan import plan, run

    return run(plan(name, task, options, kind="edges"), model)


def circuit_mask(scores: torch.Tensor, top_edges: int = 100, threshold: float | None = None) -> torch.Tensor:
    """Bool (E,): ``|score| >= threshold`` if given, else the ``top_edges`` largest ``|score|``;
    NaN scores (edges not computed, e.g. outside ``receiver_layers``) are never in the circuit."""
    if threshold is not None:
        if threshold < 0:
            raise HeadscopeError(f"threshold must be >= 0 (it applies to |score|); got {threshold}.")
        return scores.abs() >= threshold
    if top_edges < 1:
        raise HeadscopeError(f"top_edges must be at least 1; got {top_edges}.")
    size = scores.abs().nan_to_num(nan=-1.0)  # argsort puts NaN first when descending
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[size.argsort(descending=True, stable=True)[:top_edges]] = True
    return mask & ~scores.isnan()


def setup(model: Any, task: Any, metric: str = "logit_diff", progress: bool = False) -> tuple[Any, Any, Any, Any]:
    """(batch, engine, graph, runs) for a contrastive task; the engine reads ``metric``."""
    from headscope.circuits.attribution import metric_fn
    from headscope.circuits.exact import prepare
    from headscope.circuits.graph import EdgeGraph
    from headscope.patching.engine import engine_for
    from headscope.tasks.contrastive import contrastive_batch

    if metric not in ("logit_diff", "kl"):
        raise HeadscopeError(f"metric must be logit_diff or kl; got '{metric}'.")
    batch = contrastive_batch(model, task)
    engine = engine_for(model, batch, progress=progress)
    graph = EdgeGraph.of(model)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    engine.metric = metric_fn(engine, runs, metric)
    return batch, engine, graph, runs


def result(model: Any, task: Any, method: str, graph: Any, runs: Any, scores: torch.Tensor, circuit: torch.Tensor,
           options: dict[str, Any], choices: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    """Wrap per-edge scores as :class:`EdgeScores` with provenance."""
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    info = task.describe()
    each = scores.dim() == 2
    base = {
        "score": "estimated metric(edge patched, noising: clean run, sender's corrupted output into one receiver input) - metric(clean), prompt mean, "
                 + ("at one token position (column position; rows of an edge sum to its summed score)" if each else "summed over positions"),
        "gqa": "k/v receivers are KV heads; an edge into a key or value is the KV head's (kv_group lists its query heads), never split",
        "clean_metric": float(runs.clean_metric.mean()),
        "corrupted_metric": float(runs.corrupted_metric.mean()),
        "n_edges": len(graph.edges),
        "circuit_edges": int(circuit.sum()),
    }
    prov = build_provenance(model, task=info, analyzer=f"circuit:{method}", options=options,
                            choices={**base, **choices}, seed=info.get("seed"))
    edges = graph.edges
    if each:  # one row per (edge, position), edge-major: row e * pos + p
        n_pos = scores.shape[1]
        edges = [e for e in graph.edges for _ in range(n_pos)]
        extra = {**(extra or {}), "position": list(range(n_pos)) * len(graph.edges)}
        scores = scores.flatten()
    return EdgeScores.from_edges(edges, scores.tolist(), circuit.tolist(), model=model.spec, task=task.name,
                                 method=method, extra=extra, provenance=prov)


@register_circuit_method("eap", "edge attribution patching: all edges from one corrupted forward and one clean forward+backward",
                         requires=ContrastiveTask, presets={"paper": {"sender_delta": "pre_norm"}})
def eap(model: Any, task: Any, metric: str = "logit_diff", top_edges: int = 100, threshold: float | None = None,
        positions: str = "sum", sender_delta: str = "post_norm") -> Any:
    """EAP scores of every edge (Syed, Rager & Conmy 2023).

    Args:
        metric: ``logit_diff`` (the task's END logit difference) or ``kl``.
        top_edges, threshold: the circuit flag (see the module docstring).
        positions: ``sum`` (one row per edge) or ``each`` (one row per edge and token position,
            column ``position``; the circuit flag then ranks rows).
        sender_delta: ``post_norm`` (a head's change of the attention sublayer's residual write,
            after the post-attention norm on Gemma-2/3 and OLMo-2: the edit exact patching makes)
            or ``pre_norm`` (hannamw/EAP-IG's per-head ``hook_result`` difference, before that
            norm; preset ``paper``). The same on models without post-attention norms; see
            :mod:`headscope.circuits.sender_delta`.
    """
    from headscope.circuits.attribution import check_positions, edge_attribution
    from headscope.circuits.sender_delta import check_sender_delta, describe

    check_positions(positions)
    check_sender_delta(sender_delta)
    _, engine, graph, runs = setup(model, task, metric)
    scores = edge_attribution(engine, runs, graph, steps=1, metric=metric, positions=positions, sender_delta=sender_delta)
    circuit = circuit_mask(scores.flatten(), top_edges, threshold)
    return result(model, task, "eap", graph, runs, scores, circuit,
                  {"metric": metric, "top_edges": top_edges, "threshold": threshold, "positions": positions,
                   "sender_delta": sender_delta},
                  {"gradient": "at the clean run, per receiver input (q/k/v through ln1 per head)",
                   "sender_delta": f"{sender_delta}: {describe(model, sender_delta)}"})


@register_circuit_method("eap_ig", "EAP with integrated gradients along clean<->corrupted", requires=ContrastiveTask,
                         presets={"paper": {"steps": 5, "interpolation": "input", "grid": "corrupted_end",
                                            "sender_delta": "pre_norm"}})
def eap_ig(model: Any, task: Any, steps: int = 5, interpolation: str = "input", metric: str = "logit_diff",
           top_edges: int = 100, threshold: float | None = None, grid: str = "clean_end", positions: str = "sum",
           sender_delta: str = "post_norm") -> Any:
    """EAP-IG scores of every edge (Hanna, Pezzelle & Belinkov 2024).

    Args:
        steps: points on the path (``corrupted + k/steps (clean - corrupted)``, k = 1..steps).
        interpolation: ``input`` (embeddings), ``activations`` (hannamw/EAP-IG's
            ``get_scores_ig_activations``: the embedding, each layer's heads, each MLP held at
            the point one group at a time, ``(2 n_layers + 1) steps`` runs) or ``joint`` (every
            sender's output at once, gradient paths kept); see :mod:`headscope.circuits.attribution`.
        metric: ``logit_diff`` or ``kl``.
        top_edges, threshold: the circuit flag.
        grid: ``clean_end`` (k = 1..steps: steps=1 is EAP) or ``corrupted_end`` (k = 0..steps-1,
            the authors' input-interpolation grid; preset ``paper``).
        positions: ``sum`` or ``each`` (one row per edge and token position, as for ``eap``).
        sender_delta: ``post_norm`` or ``pre_norm`` (preset ``paper``), as for ``eap``; with
            ``interpolation=activations`` ``pre_norm`` is the reference's procedure throughout
            (held heads at their z, differences at ``hook_result``).
    """
    from headscope.circuits.attribution import check_positions, edge_attribution
    from headscope.circuits.sender_delta import check_sender_delta, describe

    check_positions(positions)
    check_sender_delta(sender_delta)
    _, engine, graph, runs = setup(model, task, metric)
    scores = edge_attribution(engine, runs, graph, steps=steps, interpolation=interpolation, metric=metric, grid=grid,
                              positions=positions, sender_delta=sender_delta)
    circuit = circuit_mask(scores.flatten(), top_edges, threshold)
    return result(model, task, "eap_ig", graph, runs, scores, circuit,
                  {"steps": steps, "interpolation": interpolation, "metric": metric, "top_edges": top_edges,
                   "threshold": threshold, "grid": grid, "positions": positions, "sender_delta": sender_delta},
                  {"path": "points corrupted + k/steps (clean - corrupted), k = 1..steps (grid clean_end: steps=1 is EAP) or "
                           "k = 0..steps-1 (grid corrupted_end, hannamw/EAP-IG's input mode)",
                   "sender_delta": f"{sender_delta}: {describe(model, sender_delta)}"})


@register_circuit_method("exact", "exact edge patching of every edge (the reference; small models)", shard=EXACT_SHARDS,
                         requires=ContrastiveTask)
def exact(model: Any, task: Any, metric: str = "logit_diff", top_edges: int = 100, threshold: float | None = None,
          progress: bool = False, receiver_layers: list[int] | None = None, positions: str = "sum") -> Any:
    """Exact noising effect of every edge, each patched alone (:mod:`headscope.circuits.exact`).

    Args:
        metric: ``logit_diff`` or ``kl``.
        top_edges, threshold: the circuit flag.
        progress: progress bar.
        receiver_layers: patch only the edges into these receiver blocks (``n_layers`` = the
            logits); the other edges get NaN and stay out of the circuit. Sharded runs set it
            per shard (:mod:`headscope.circuits.sharding`); None = every edge.
        positions: ``sum`` only: per-position exact patching would cost one forward per edge and
            position (and, unlike EAP, the exact per-position effects do not sum to the edge's).
    """
    from headscope.circuits.attribution import check_positions
    from headscope.circuits.exact import exact_edge_effects

    check_positions(positions)
    if positions != "sum":
        raise HeadscopeError("exact edge patching scores whole edges only (positions=each would take one forward per edge and position); use eap or eap_ig with positions=each.")

    if receiver_layers is not None:
        bad = sorted({int(x) for x in receiver_layers} - set(range(model.n_layers + 1)))
        if bad:
            raise HeadscopeError(f"receiver_layers {bad} out of range: blocks are 0..{model.n_layers - 1} and "
                                 f"{model.n_layers} for the logits.")
    _, engine, graph, runs = setup(model, task, metric, progress)
    wanted = None if receiver_layers is None else {int(x) for x in receiver_layers}
    pick = [i for i, e in enumerate(graph.edges) if wanted is None or e.receiver.layer in wanted]
    scores = torch.full((len(graph.edges),), float("nan"))
    if pick:
        with torch.inference_mode():
            scores[pick] = exact_edge_effects(engine, runs, [graph.edges[i] for i in pick]).mean(1)
    circuit = circuit_mask(scores, top_edges, threshold)
    return result(model, task, "exact", graph, runs, scores, circuit,
                  {"metric": metric, "top_edges": top_edges, "threshold": threshold, "receiver_layers": receiver_layers},
                  {"patch": "one edge at a time, everything else clean"}, extra={"exact": scores.tolist()})
