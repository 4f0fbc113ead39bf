"""``verified``'s greedy pruning is ACDC's ``step`` loop, copied by hand onto raw Hugging Face runs.

Reference: ``ArthurConmy/Automatic-Circuit-Discovery``, ``acdc/TLACDCExperiment.py``,
``TLACDCExperiment.step``: for each incoming edge of the current receiver, ``old_metric =
self.cur_metric``; the edge is removed and the metric evaluated (``evaluated_metric``);
``result = evaluated_metric - old_metric`` (L608); ``if self.abs_value_threshold: result =
abs(result)`` (L614-615; ``abs_value_threshold=False`` by default, L67, and ``acdc/main.py``'s
``--abs-value-threshold`` flag, L170); ``if result < self.threshold`` the edge stays removed,
else it is restored and ``cur_metric = old_metric`` (L617-625). Receivers are visited in reverse
execution order (``reverse_topologically_sort_corr``: per layer from the back, the MLP input,
then the v, k and q inputs, each over its heads from the last; then earlier layers), each
receiver's senders from the latest back. ACDC's metric falls toward the clean run: the KL
divergence from the clean run (``acdc/main.py`` ``--metric kl_div``, the default) or the negated
logit difference (``acdc/acdc_utils.py``, ``logit_diff_metric``: "negative sign so we minimize").

Here the loop runs on :class:`.raw_graph.RawGraph` (the patched graph from raw HF forwards with
module hooks, no headscope) and its kept set must equal ``verified``'s, over the same candidate
edges (``verified``'s: its rows with an exact effect) and the same threshold (1% of
``|clean - corrupted|`` of the metric, from raw runs).
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.graph import EdgeGraph
from headscope.circuits.methods import run_circuit_method

from .raw_edges import FixedTask
from .raw_graph import RawGraph, Removed
from .raw_hf import end_rows, logit_diff

Key = tuple[str, str, str, int, int]
INPUT_ORDER = {"q": 0, "k": 1, "v": 2, "in": 3}


def key(edge) -> Key:  # noqa: ANN001
    r = edge.receiver
    return (edge.sender.name, r.kind, r.input, r.layer, r.unit)


def acdc_order(edges: list[Key]) -> list[Key]:
    """ACDC's visiting order: receivers in reverse execution order (logits, then per layer from the
    last: MLP input, v, k, q, each from the last unit), each receiver's senders from the latest."""
    def sender_rank(name: str) -> tuple[int, int, int]:
        if name == "input":
            return (-1, 0, 0)
        if name.startswith("m"):
            return (int(name[1:]), 1, 0)
        layer, head = (int(t) for t in name[1:].split(".h"))
        return (layer, 0, head)

    return sorted(edges, key=lambda e: ((e[3], INPUT_ORDER[e[2]], e[4]), sender_rank(e[0])), reverse=True)


def acdc_metric(raw, batch, metric: str):  # noqa: ANN001, ANN201
    """ACDC's metric (lower = closer to clean) of raw logits, prompt mean."""
    clean_logp = torch.log_softmax(end_rows(raw.run(batch.clean).logits, batch.end), -1)
    if metric == "kl":  # acdc_utils.kl_divergence: KL(clean || run) at the last position
        return lambda logits: float((clean_logp.exp() * (clean_logp - torch.log_softmax(end_rows(logits, batch.end), -1))).sum(-1).mean())
    ld = lambda logits: logit_diff(logits, batch.end, batch.answer, batch.wrong)  # noqa: E731
    # acdc_utils.logit_diff_metric: -(logit[correct] - logit[wrong]), "correct" the label the clean run
    # favours over the corrupted one (ACDC's IOI); where the clean run is below the corrupted one, swap them
    above = float(ld(raw.run(batch.clean).logits).mean()) > float(ld(raw.run(batch.corrupted).logits).mean())
    return lambda logits: float((-ld(logits) if above else ld(logits)).mean())


def acdc_prune(graph: RawGraph, all_edges: list[Key], candidates: list[Key], metric, threshold: float,  # noqa: ANN001
               abs_value_threshold: bool = False) -> tuple[set[Key], list[tuple[Key, float, bool]]]:
    """TLACDCExperiment.step over ``candidates`` (every other edge removed from the start).

    Returns:
        (the kept edges, (edge, signed result, removed) per trial).
    """
    removed: Removed = set(all_edges) - set(candidates)
    cur_metric = metric(graph.logits(removed))
    trials = []
    for edge in acdc_order(candidates):
        old_metric = cur_metric
        evaluated_metric = metric(graph.logits(removed | {edge}))
        result = evaluated_metric - old_metric
        trials.append((edge, result, False))
        if abs_value_threshold:
            result = abs(result)
        if result < threshold:
            removed.add(edge)
            cur_metric = evaluated_metric
            trials[-1] = (*trials[-1][:2], True)
        else:
            cur_metric = old_metric
    return set(candidates) - removed, trials


def run_both(pair, prompts, metric: str, rule: str, candidates: int):  # noqa: ANN001, ANN201
    """headscope's verified kept set, and the hand ACDC loop's over the same candidates."""
    batch, raw = prompts.batch, pair.raw
    res = run_circuit_method("verified", pair.hs, FixedTask(batch), steps=2, metric=metric, candidates=candidates,
                             curve=False, threshold_rule=rule)
    graph = EdgeGraph.of(pair.hs)
    keys = [key(e) for e in graph.edges]
    cand = [keys[i] for i in range(len(keys)) if res["exact"].iloc[i] == res["exact"].iloc[i]]  # not NaN
    hs_kept = {keys[i] for i in range(len(keys)) if bool(res["circuit"].iloc[i])}
    m = acdc_metric(raw, batch, metric)
    threshold = 0.01 * abs(m(raw.run(batch.clean).logits) - m(raw.run(batch.corrupted).logits))
    kept, trials = acdc_prune(RawGraph(raw, batch.clean, batch.corrupted), keys, cand, m, threshold,
                              abs_value_threshold=rule == "abs")
    assert len(cand) == candidates and res.provenance["choices"]["pruning"]["threshold"] == pytest.approx(threshold, rel=1e-4)
    return hs_kept, kept, trials, threshold


@pytest.mark.parametrize("metric", ["kl", "logit_diff"])
@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_verified_keeps_what_acdc_keeps(fam, metric, zoo_cache, prompts):
    """Default (signed) rule: the kept set of ``verified`` is the hand ACDC loop's. On llama the
    clean logit difference is below the corrupted one, so the logit-difference case also checks
    the orientation toward clean."""
    hs_kept, kept, trials, threshold = run_both(zoo_cache[fam], prompts, metric, "signed", candidates=30)
    assert 0 < len(kept) < 30, f"the case should prune something and keep something: {len(kept)}"
    assert hs_kept == kept, f"headscope kept {sorted(hs_kept - kept)} extra, dropped {sorted(kept - hs_kept)}"


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_abs_rule_keeps_the_edges_whose_removal_helps(fam, zoo_cache, prompts):
    """``threshold_rule="abs"`` is ACDC with ``abs_value_threshold``. It differs from the default
    where a removal moves the metric toward clean by more than the threshold: the two loops agree
    trial by trial up to the first such edge, which the signed rule removes and the abs rule keeps."""
    pair = zoo_cache[fam]
    hs_abs, acdc_abs, abs_trials, threshold = run_both(pair, prompts, "logit_diff", "abs", candidates=30)
    assert hs_abs == acdc_abs
    signed, _, trials, _ = run_both(pair, prompts, "logit_diff", "signed", candidates=30)
    assert hs_abs != signed
    first = next(j for j, (s, a) in enumerate(zip(trials, abs_trials, strict=True)) if s[2] != a[2])
    edge, result, _ = trials[first]
    assert abs_trials[first][:2] == (edge, pytest.approx(result))
    assert result <= -threshold, f"{edge}: the first disagreement should be a removal that helps ({result:.3g})"
    assert edge not in signed and edge in hs_abs
