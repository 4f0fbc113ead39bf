"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality"), with the query-masking causal check.

Retrieval score. Run the ``needle`` task with greedy decoding. At each step the model emits
token ``y``; a query head *copies* when its top-1 attention from the current (last) query lands
inside the needle span on a token equal to ``y``. A head's score on one trial is the number of
distinct needle positions it copied divided by the needle's length in tokens (the paper's
``|g_h ∩ k| / |k|``). Only trials whose answer recalls the needle (ROUGE-1 recall > 0.5,
:func:`rouge1_recall`) count; the ``retrieval`` score is the mean over those trials. Heads are
scored per query head (under GQA the pattern is per query head already).

Memory: model + KV cache + O(n) per layer. The prompt but its last token is prefilled into the
Hugging Face KV cache ``prefill_chunk`` (default 1024) queries per forward pass with nothing
captured, so eager attention holds at most (heads, chunk, n) scores, one layer at a time. Each
decoding step (the first feeds the prompt's last token) feeds one token with the cache
(``trace(..., use_cache=True)``); its only capture is the last query row's argmax per head,
reduced inside the hook (a tracer reducer), so the traced rows are (1, heads, 1, n) and no
pattern is kept.

Causal check (``check_masking=True``): rerun the task with the top ``mask_k`` retrieval heads
masked versus ``mask_k`` random non-retrieval heads (score <= ``threshold``), for
``n_random`` seeds, and report needle accuracy (fraction of trials with ROUGE-1 recall > 0.5)
for each. Masking is :class:`headscope.interventions.MaskQuery` with ``scale=0``: the head's
query is zeroed, so its attention becomes uniform over the causal window (as in the paper).
Results go into the provenance under ``causal_check``.

Choices (recorded in provenance): greedy decoding; stop at EOS / end-of-turn, at the first
token that ends a sentence or line (the prompt asks for one sentence), or after
``max_new_tokens`` (default: needle length + 8); ROUGE reference (the needle sentence, as in the
paper, or the answer phrase -- the default, see ``rouge_reference``); distinct-position counting; threshold 0.1 for "retrieval head".
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.generation import stop_token_ids
from headscope.interventions import MaskQuery
from headscope.progress import progress_bar
from headscope.results import HeadScores, build_provenance
from headscope.trace import last_query_argmax, trace

Head = tuple[int, int]


def rouge1_recall(response: str, reference: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / reference unigrams (lower-cased ``\\w+`` words)."""
    ref = Counter(re.findall(r"\w+", reference.lower()))
    got = Counter(re.findall(r"\w+", response.lower()))
    total = sum(ref.values())
    return sum(min(n, got[w]) for w, n in ref.items()) / total if total else 0.0


def _ends_sentence(piece: str) -> bool:
    """True for a token that ends a sentence or a line (``.``, ``!``, ``?`` or a newline)."""
    return "\n" in piece or piece.rstrip().rstrip("\"')").endswith((".", "!", "?"))


PREFILL_CHUNK = 1024


def prefill(model: Any, tokens: torch.Tensor, chunk: int, interventions: tuple[Any, ...] = ()) -> Any:
    """Run ``tokens`` (1, pos) into a fresh KV cache, ``chunk`` query positions per forward pass
    (``chunk`` <= 0: all at once), capturing nothing; returns the cache (None for no tokens).

    Memory: eager attention materialises (heads, chunk, n_keys) scores for one layer at a time, so
    the prompt costs the KV cache plus O(chunk * n) per layer instead of O(n^2) (Wu et al. score
    only the decoding steps' attention rows; the prompt's own rows are never needed).
    """
    n = int(tokens.shape[1])
    step = n if chunk <= 0 else int(chunk)
    cache = None
    for start in range(0, n, max(1, step)):
        part = tokens[:, start : start + step]
        tr = trace(model, part, interventions=interventions, use_cache=True, past_key_values=cache,
                   logit_positions=torch.tensor([part.shape[1] - 1]))
        cache = tr.past_key_values
    return cache


def greedy_decode(
    model: Any,
    trial: Any,
    max_new_tokens: int,
    interventions: tuple[Any, ...] = (),
    score: bool = True,
    sentence_end: bool = True,
    prefill_chunk: int = PREFILL_CHUNK,
) -> tuple[str, np.ndarray | None]:
    """Greedily decode one trial; optionally score copy events per head.

    The prompt but its last token is prefilled into the KV cache ``prefill_chunk`` queries at a
    time with nothing captured (:func:`prefill`); the last prompt token is then the first
    decoding step, so every traced attention row is one query over all keys: (1, heads, 1, n).

    Returns:
        ``(response text, copied)`` where ``copied`` is a (n_layers, n_heads) array of distinct
        needle positions each head copied (None when ``score`` is False).
    """
    ids = trial.tokens
    start, end = trial.needle_span
    stops = stop_token_ids(model.tokenizer)
    copied: list[list[set[int]]] = [[set() for _ in range(model.n_heads)] for _ in range(model.n_layers)]
    out: list[int] = []
    reducers = [last_query_argmax("top1")] if score else []
    cache = prefill(model, ids[:, :-1], prefill_chunk, interventions)
    step_input = ids[:, -1:]
    for _ in range(max_new_tokens):
        # incremental decoding with the KV cache: each step feeds only the newest token
        tr = trace(model, step_input, reducers=reducers, interventions=interventions, use_cache=True,
                   past_key_values=cache, logit_positions=torch.tensor([step_input.shape[1] - 1]))
        cache = tr.past_key_values
        y = int(tr.logits[0, -1].argmax())
        if y in stops:
            break
        if score:
            top = tr.reduced("top1")[0].cpu()  # (layer, head) key positions
            inside = (top >= start) & (top < end)
            for layer, head in inside.nonzero().tolist():
                p = int(top[layer, head])
                if int(ids[0, p]) == y:
                    copied[layer][head].add(p)
        out.append(y)
        step_input = torch.tensor([[y]], dtype=ids.dtype)
        ids = torch.cat([ids, step_input], dim=1)
        if sentence_end and _ends_sentence(model.tokenizer.decode([y])):
            break
    counts = np.array([[len(s) for s in row] for row in copied], dtype=float) if score else None
    return model.tokenizer.decode(out, skip_special_tokens=True), counts


def needle_accuracy(model: Any, trials: list[Any], max_new: list[int], reference: str,
                    interventions: tuple[Any, ...] = (), progress: bool = False, label: str = "needle") -> float:
    """Fraction of trials answered (ROUGE-1 recall > 0.5) under ``interventions``."""
    ok = 0
    for trial, n_new in progress_bar(list(zip(trials, max_new, strict=True)), label, enabled=progress):
        text, _ = greedy_decode(model, trial, n_new, interventions, score=False)
        ok += rouge1_recall(text, trial.needle if reference == "needle" else trial.answer) > 0.5
    return ok / max(1, len(trials))


def trial_units(model: Any, task: Any, options: dict[str, Any]) -> list[int]:
    """Every needle trial of a run (its ``trials`` option, default all), the units of a shard."""
    chosen = options.get("trials")
    return sorted({int(i) for i in chosen}) if chosen is not None else list(range(len(task.trials(model))))


def summarize(scores: np.ndarray, records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Counts of trials and of heads above ``threshold`` (the provenance ``summary``)."""
    n_counted = sum(bool(r["counted"]) for r in records)
    return {
        "n_trials": len(records),
        "n_counted": n_counted,
        "accuracy": n_counted / max(1, len(records)),
        f"fraction_heads_above_{threshold}": float((scores > threshold).mean()),
        "n_heads_above_threshold": int((scores > threshold).sum()),
    }


def retrieval_scores(model: Any, task: Any, scores: np.ndarray, n_counted: int, provenance: dict[str, Any]) -> HeadScores:
    """The ``retrieval`` metric rows (``n`` = counted trials)."""
    return HeadScores.from_matrix(scores, model=model.spec, task=task.name, analyzer="retrieval_heads", metric="retrieval",
                                  extra={"n": n_counted, "kv_head": model.kv_head_matrix()}, provenance=provenance)


def merge_shards(parts: list[HeadScores]) -> HeadScores:
    """Merge retrieval-head shards (each a set of needle trials): a head's score is the mean over
    all counted trials, i.e. the parts' scores weighted by their counted trials ``n``; the trial
    records are concatenated in trial order and the summary recomputed."""
    prov = dict(parts[0].provenance)
    counts = [int(p["n"].iloc[0]) for p in parts]
    total = sum(p["score"].to_numpy() * n for p, n in zip(parts, counts, strict=True))
    n_counted = sum(counts)
    scores = total / n_counted if n_counted else total
    records = sorted((r for p in parts for r in p.provenance["choices"]["trials"]), key=lambda r: r["trial"])
    choices = dict(prov["choices"])
    choices["trials"] = records
    choices["summary"] = summarize(scores, records, float(prov["options"]["threshold"]))
    prov["choices"] = choices
    out = HeadScores(parts[0].reset_index(drop=True).copy())
    out["score"] = scores
    out["n"] = n_counted
    out.provenance = prov
    return out


def _shard_spec() -> Any:
    from headscope.scale.spec import ShardSpec

    return ShardSpec(unit="needle trial", options=("trials",), units=trial_units,
                     restrict=lambda mine: {"trials": [int(u) for u in mine]},  # type: ignore[arg-type]
                     merge=merge_shards)


@register_analyzer(
    "retrieval_heads",
    summary="retrieval score (Wu et al. 2024): copy-paste attention from the needle during greedy decoding",
    tasks=("needle",),
    shard=_shard_spec(),
)
def retrieval_heads(
    model: Any,
    task: Any,
    threshold: float = 0.1,
    rouge_reference: str = "answer",
    max_new_tokens: int | None = None,
    check_masking: bool = False,
    mask_k: int = 10,
    n_random: int = 3,
    seed: int = 0,
    trials: list[int] | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    progress: bool = False,
) -> HeadScores:
    """Retrieval score of every query head, optionally with the masking causal check.

    Args:
        threshold: a head with score above it is a retrieval head (summary and masking pool).
        rouge_reference: ``answer`` (default: the answer phrase) or ``needle`` (the whole needle
            sentence, as in the paper; with our needles a wrong answer that repeats the question
            can pass it, e.g. "The password for the old garden shed is a dictionary." has
            recall 0.8, so it is not the default).
        max_new_tokens: decoding budget per trial (default: needle tokens + 8).
        check_masking: run the causal check (top ``mask_k`` vs random heads, ``n_random`` seeds).
        seed: seed of the random head draws.
        trials: only these trial indices of the task's grid (default all), e.g. one shard's.
        prefill_chunk: query positions per prefill forward pass (memory O(chunk * n) per layer;
            0 = the whole prompt at once).
        progress: show progress bars.

    Returns:
        HeadScores with metric ``retrieval`` (``n`` = counted trials); the summary (fraction of
        heads above ``threshold``, trial accuracy) and the causal check are in the provenance.
    """
    if rouge_reference not in ("needle", "answer"):
        raise HeadscopeError("rouge_reference must be 'needle' or 'answer'.")
    every = task.trials(model)
    if trials is not None:
        bad = [i for i in trials if not 0 <= int(i) < len(every)]
        if bad:
            raise HeadscopeError(f"trial {bad[0]} is out of range: the task has trials 0..{len(every) - 1}.")
        if check_masking:
            raise HeadscopeError("check_masking needs every trial's scores: run it without trials= or sharding "
                                 "(e.g. on the merged result's top heads with `headscope ablate`).")
    indices = list(range(len(every))) if trials is None else sorted({int(i) for i in trials})
    chosen = [every[i] for i in indices]
    budgets = [max_new_tokens or (t.needle_span[1] - t.needle_span[0] + 8) for t in chosen]
    shape = (model.n_layers, model.n_heads)
    total = np.zeros(shape)
    records = []
    for index, trial, n_new in progress_bar(list(zip(indices, chosen, budgets, strict=True)), "retrieval",
                                            enabled=progress):
        text, copied = greedy_decode(model, trial, n_new, prefill_chunk=prefill_chunk)
        reference = trial.needle if rouge_reference == "needle" else trial.answer
        recall = rouge1_recall(text, reference)
        counted = recall > 0.5
        if counted:
            total += copied / (trial.needle_span[1] - trial.needle_span[0])
        records.append({"trial": index, "context_len": trial.context_len, "depth": trial.depth, "needle": trial.needle,
                        "response": text, "rouge1_recall": round(recall, 4), "counted": bool(counted)})
    n_counted = sum(r["counted"] for r in records)
    scores = total / n_counted if n_counted else total
    summary = summarize(scores, records, threshold)
    causal = None
    if check_masking:
        causal = masking_check(model, chosen, budgets, scores, mask_k, n_random, threshold, seed,
                               rouge_reference, progress, base_accuracy=summary["accuracy"])
    provenance = build_provenance(
        model,
        task=task.describe(),
        analyzer="retrieval_heads",
        options={"threshold": threshold, "rouge_reference": rouge_reference, "max_new_tokens": max_new_tokens,
                 "check_masking": check_masking, "mask_k": mask_k, "n_random": n_random, "seed": seed,
                 "trials": trials, "prefill_chunk": prefill_chunk},
        choices={
            "decoding": "greedy with the KV cache (each step feeds only the new token), stop at EOS/end-of-turn, at a token "
            "ending a sentence or line, or after max_new_tokens",
            "copy_event": "top-1 attention of the last query inside the needle span on a token equal to "
            "the emitted token; distinct needle positions per head / needle length",
            "counted_trials": f"ROUGE-1 recall vs the {rouge_reference} > 0.5",
            "gqa": "per query head",
            "memory": f"prompt prefilled into the KV cache {prefill_chunk or 'all'} queries per pass with nothing "
            "captured; each decoding step's last-query-row argmax reduced inside the hook; no pattern kept",
            "summary": summary,
            "trials": records,
            "causal_check": causal,
        },
        seed=seed,
    )
    return retrieval_scores(model, task, scores, n_counted, provenance)


def masking_check(model: Any, trials: list[Any], budgets: list[int], scores: np.ndarray, k: int, n_random: int,
                  threshold: float, seed: int, reference: str, progress: bool,
                  base_accuracy: float | None = None) -> dict[str, Any]:
    """Needle accuracy with the top-k retrieval heads masked vs k random non-retrieval heads."""
    order = np.argsort(-scores, axis=None, kind="stable")
    top: list[Head] = [tuple(int(x) for x in np.unravel_index(i, scores.shape)) for i in order[:k]]  # type: ignore[misc]
    pool = [(lay, h) for lay in range(model.n_layers) for h in range(model.n_heads)
            if scores[lay, h] <= threshold and (lay, h) not in top]
    if len(pool) < k:
        raise HeadscopeError(f"only {len(pool)} non-retrieval heads to draw {k} random heads from: lower mask_k.")
    if base_accuracy is None:
        base_accuracy = needle_accuracy(model, trials, budgets, reference, (), progress, "unmasked")
    top_acc = needle_accuracy(model, trials, budgets, reference, (MaskQuery(top, scale=0.0),), progress, "top-k masked")
    random_runs = []
    for s in range(n_random):
        gen = torch.Generator().manual_seed(seed + s)
        pick = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:k].tolist()]
        acc = needle_accuracy(model, trials, budgets, reference, (MaskQuery(pick, scale=0.0),), progress,
                              f"random masked {s}")
        random_runs.append({"seed": seed + s, "heads": [f"{a}.{b}" for a, b in pick], "accuracy": acc})
    return {
        "masking": "MaskQuery(scale=0): query zeroed, uniform attention",
        "k": k,
        "unmasked_accuracy": base_accuracy,
        "top_k_heads": [f"{a}.{b}" for a, b in top],
        "top_k_accuracy": top_acc,
        "random": random_runs,
        "random_mean_accuracy": float(np.mean([r["accuracy"] for r in random_runs])) if random_runs else None,
    }
