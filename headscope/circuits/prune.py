"""Verified circuits: exact verification of the top attributed edges, greedy pruning, faithfulness.

1. **Rank** every edge by EAP-IG (:mod:`.attribution`).
2. **Verify** the ``candidates`` top edges by exact edge patching (:mod:`.exact`, batched: one
   slice per edge) and report how well the ranking agrees with the exact effects (Spearman
   rank correlation, sign agreement, overlap of the top halves).
3. **Prune** greedily as ACDC does (Conmy et al. 2023, Algorithm 1), restricted to the
   candidates: start from the candidates (every other edge removed, i.e. patched to the
   corrupted run, :mod:`.patched_graph`); visit receivers in reverse topological order
   (logits first) and, for each, its incoming candidate edges from the latest sender back;
   remove an edge when its removal moves the prompt-mean metric *away from the clean run* by
   less than ``threshold`` (or moves it toward the clean run), else keep it (``threshold_rule=
   "signed"``, the default). This is ACDC's rule (``ArthurConmy/Automatic-Circuit-Discovery``,
   ``acdc/TLACDCExperiment.py``, ``TLACDCExperiment.step``, L608-617: ``result = evaluated_metric -
   old_metric``, ``abs()`` only when ``abs_value_threshold``, an ``__init__`` option (L67) off by
   default and the ``--abs-value-threshold`` flag of ``acdc/main.py`` (L170); remove ``if result <
   self.threshold``). ACDC's metric is a distance from the clean run (KL, or ``-logit diff``,
   ``acdc/acdc_utils.py``, ``logit_diff_metric``: "negative sign so we minimize"). Here the metric
   is the task's (logit difference, or ``-KL`` with ``metric=kl``), turned into that orientation
   by :func:`distance_change`. ``threshold_rule="abs"`` removes an edge only when the metric moves
   by less than ``threshold`` either way (ACDC's ``abs_value_threshold``; headscope's rule before
   issue 22): it keeps edges whose removal brings the metric closer to clean. Each trial reruns
   the model only from its receiver's layer on (:func:`.patched_graph.restart_layer`): in this
   order no removal changes the layers before it.
4. **Faithfulness** of an edge set ``C`` (Wang et al. 2022; Hanna et al. 2024):
   ``(M(C) - M(corrupted)) / (M(clean) - M(corrupted))`` with every edge outside ``C`` removed;
   a curve over the top-k edges of the ranking, and the same for random edge sets of each size
   (seeded) as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns, exact_edge_effects
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.methods import register_circuit_method, result, setup
from headscope.circuits.patched_graph import GraphPrefix, graph_metric
from headscope.errors import HeadscopeError
from headscope.patching.attribution import rank_correlation
from headscope.patching.engine import PatchEngine


def _baselines(engine: PatchEngine, runs: EdgeRuns) -> tuple[float, float]:
    return float(engine.metric(runs.clean.end_logits).mean()), float(engine.metric(runs.corrupted.end_logits).mean())


def faithfulness(engine: PatchEngine, runs: EdgeRuns, graph: EdgeGraph, keep: torch.Tensor) -> float:
    """``(M(keep) - M(corrupted)) / (M(clean) - M(corrupted))`` with every edge outside ``keep`` (E,) removed."""
    clean, corrupted = _baselines(engine, runs)
    if clean == corrupted:
        raise HeadscopeError("clean and corrupted runs give the same metric: faithfulness is undefined.")
    m = float(graph_metric(engine, runs, graph, ~keep).mean())
    return (m - corrupted) / (clean - corrupted)


def default_sizes(n_edges: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``n_edges`` (included)."""
    sizes, base = [], 1
    while base <= n_edges:
        sizes += [s for s in (base, 2 * base, 5 * base) if s <= n_edges]
        base *= 10
    return sorted({*sizes, n_edges})


def faithfulness_curve(engine: PatchEngine, runs: EdgeRuns, graph: EdgeGraph, scores: torch.Tensor,
                       sizes: list[int], n_random: int = 3, seed: int = 0) -> list[dict[str, float]]:
    """Faithfulness of the top-k edges by ``|scores|`` and of ``n_random`` random k-edge sets, per size.

    Returns:
        one dict per size: ``{"edges": k, "faithfulness": ..., "random_mean": ..., "random_std": ...}``.
    """
    order = scores.abs().argsort(descending=True, stable=True)
    gen = torch.Generator().manual_seed(seed)
    n_edges = len(graph.edges)
    out = []
    for k in sizes:
        keep = torch.zeros(n_edges, dtype=torch.bool)
        keep[order[:k]] = True
        rand = []
        for _ in range(n_random):
            r = torch.zeros(n_edges, dtype=torch.bool)
            r[torch.randperm(n_edges, generator=gen)[:k]] = True
            rand.append(faithfulness(engine, runs, graph, r))
        t = torch.tensor(rand) if rand else torch.tensor([float("nan")])
        out.append({"edges": int(k), "faithfulness": faithfulness(engine, runs, graph, keep),
                    "random_mean": float(t.mean()), "random_std": float(t.std()) if len(rand) > 1 else 0.0})
    return out


THRESHOLD_RULES = ("signed", "abs")
_RULE_TEXT = {
    "signed": "signed (ACDC default, acdc/TLACDCExperiment.py step L608-617): remove when the removal moves the "
              "metric away from clean by less than the threshold, or toward clean",
    "abs": "abs (ACDC abs_value_threshold): remove when |metric change| < threshold",
}


def distance_change(value: float, current: float, clean: float, corrupted: float) -> float:
    """ACDC's ``result = evaluated_metric - old_metric`` in headscope's metric (see the module docstring).

    ACDC's metric ``D`` falls toward the clean run; headscope's ``M`` moves from ``corrupted``
    toward ``clean``, so ``D = -sign(clean - corrupted) * M`` (logit diff with clean > corrupted:
    ``D = -M``, ACDC's ``-logit diff``; ``metric=kl``: ``M = -KL``, ``clean = 0 > corrupted``, so
    ``D = KL``). Returns ``D(value) - D(current)``: positive when removing the edge moved the metric
    away from clean.
    """
    if clean == corrupted:
        raise HeadscopeError("clean and corrupted runs give the same metric: the signed threshold rule has no "
                             "direction toward clean; use threshold_rule='abs' or another task.")
    return (1.0 if clean > corrupted else -1.0) * (current - value)


def greedy_prune(engine: PatchEngine, runs: EdgeRuns, graph: EdgeGraph, keep: torch.Tensor, threshold: float,
                 progress: Callable[[int, int, int], None] | None = None,
                 threshold_rule: str = "signed") -> tuple[torch.Tensor, int]:
    """ACDC-style greedy removal over the edges in ``keep`` (see the module docstring).

    Args:
        progress: called after each trial with (trials done, trials in all, edges kept so far).
        threshold_rule: ``"signed"`` (ACDC's default): remove when :func:`distance_change` ``<
            threshold``; ``"abs"``: remove when ``|value - current| < threshold``.

    Returns:
        (the kept edges (E,) bool, the number of removals tried).
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise HeadscopeError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}; got '{threshold_rule}'.")
    clean, corrupted = _baselines(engine, runs)
    keep = keep.clone()
    base = GraphPrefix()
    current = float(graph_metric(engine, runs, graph, ~keep, record=base).mean())
    receivers = {r.key: i for i, r in enumerate(graph.receivers)}
    senders = {s.name: i for i, s in enumerate(graph.senders)}
    order = sorted((i for i in range(len(graph.edges)) if keep[i]),
                   key=lambda i: (-receivers[graph.edges[i].receiver.key], -senders[graph.edges[i].sender.name]))
    for done, i in enumerate(order, 1):
        trial = keep.clone()
        trial[i] = False
        value = float(graph_metric(engine, runs, graph, ~trial, start=base).mean())
        change = abs(value - current) if threshold_rule == "abs" else distance_change(value, current, clean, corrupted)
        if change < threshold:
            keep, current = trial, value
        if progress is not None:
            progress(done, len(order), int(keep.sum()))
    return keep, len(order)


def agreement(estimate: torch.Tensor, exact: torch.Tensor) -> dict[str, Any]:
    """How an attribution ranking agrees with exact effects on the same edges."""
    half = max(1, len(exact) // 2)
    top_e = set(estimate.abs().argsort(descending=True)[:half].tolist())
    top_x = set(exact.abs().argsort(descending=True)[:half].tolist())
    return {
        "rank_correlation": rank_correlation(estimate, exact),
        "sign_agreement": float((torch.sign(estimate) == torch.sign(exact)).float().mean()),
        "top_half_overlap": len(top_e & top_x) / half,
        "max_abs_error": float((estimate - exact).abs().max()),
    }


@register_circuit_method("verified", "EAP-IG ranking, exact verification of the top edges, ACDC-style greedy pruning, faithfulness")
def verified(model: Any, task: Any, steps: int = 5, interpolation: str = "input", metric: str = "logit_diff",
             candidates: int = 50, threshold: float | None = None, n_random: int = 3, curve: bool = True,
             seed: int = 0, threshold_rule: str = "signed") -> Any:
    """A verified circuit (see the module docstring).

    Args:
        steps, interpolation, metric: the EAP-IG ranking (see ``eap_ig``).
        candidates: the top edges verified exactly and pruned over.
        threshold: pruning threshold on the change of the prompt-mean metric (default 1% of
            ``|clean - corrupted|``).
        n_random: random edge sets per size for the faithfulness baseline.
        curve: compute the faithfulness curve (top-k vs random).
        seed: seed of the random edge sets.
        threshold_rule: ``"signed"`` (default; ACDC's, ``acdc/TLACDCExperiment.py`` L608-617): remove
            an edge when its removal moves the metric away from clean by less than ``threshold``, or
            toward clean; ``"abs"`` (ACDC's ``abs_value_threshold``; headscope's rule before issue
            22): remove when the metric moves by less than ``threshold`` either way.
    """
    from headscope.circuits.attribution import edge_attribution

    if candidates < 1:
        raise HeadscopeError(f"candidates must be at least 1; got {candidates}.")
    if threshold_rule not in THRESHOLD_RULES:
        raise HeadscopeError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}; got '{threshold_rule}'.")
    _, engine, graph, runs = setup(model, task, metric)
    scores = edge_attribution(engine, runs, graph, steps=steps, interpolation=interpolation, metric=metric)
    n_edges = len(graph.edges)
    top = scores.abs().argsort(descending=True, stable=True)[: min(candidates, n_edges)]
    with torch.inference_mode():
        exact = exact_edge_effects(engine, runs, [graph.edges[i] for i in top.tolist()]).mean(1)
    exact_col = torch.full((n_edges,), float("nan"))
    exact_col[top] = exact
    clean, corrupted = _baselines(engine, runs)
    thr = 0.01 * abs(clean - corrupted) if threshold is None else float(threshold)
    keep = torch.zeros(n_edges, dtype=torch.bool)
    keep[top] = True
    pruned, tried = greedy_prune(engine, runs, graph, keep, thr, threshold_rule=threshold_rule)
    choices: dict[str, Any] = {
        "ranking": f"EAP-IG, {steps} steps, {interpolation} interpolation",
        "verification": agreement(scores[top], exact),
        "pruning": {"threshold": thr, "threshold_rule": _RULE_TEXT[threshold_rule], "candidates": int(len(top)), "removals_tried": tried, "kept": int(pruned.sum()),
                    "order": "receivers from the logits back, each one's senders from the latest back (ACDC)"},
        "circuit_faithfulness": faithfulness(engine, runs, graph, pruned),
        "candidates_faithfulness": faithfulness(engine, runs, graph, keep),
    }
    if curve:
        choices["faithfulness_curve"] = faithfulness_curve(engine, runs, graph, scores, default_sizes(n_edges),
                                                           n_random=n_random, seed=seed)
    return result(model, task, "verified", graph, runs, scores, pruned,
                  {"steps": steps, "interpolation": interpolation, "metric": metric, "candidates": candidates,
                   "threshold": threshold, "n_random": n_random, "curve": curve, "seed": seed,
                   "threshold_rule": threshold_rule},
                  choices, extra={"exact": exact_col.tolist()})
