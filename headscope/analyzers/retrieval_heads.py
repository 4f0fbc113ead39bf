"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality"), with the query-masking causal check.

Retrieval score. Run the ``needle`` task with greedy decoding. At each step the model emits
token ``y``; a query head *copies* when its top-1 attention from the current (last) query lands
inside the needle span ``k`` on a token equal to ``y``. The first answer token is scored from
the prompt's last query (the prompt pass). Per trial, ``scoring`` gives a head's score:

- ``distinct`` (default): the number of distinct needle positions it copied, ``/ |k|`` (the
  paper's ``|g_h ∩ k| / |k|`` read as a set: a position copied twice counts once);
- ``reference`` (the ``paper`` preset): ``1/|k|`` added on every step that copies, so a needle
  token copied twice counts twice. This is the authors' code, ``nightdessert/Retrieval_Head``
  @3ac171a, ``retrieval_head_detection.py:221-228`` (``retrieval_calculate``: top-1 of
  ``attention[layer][0][head][-1]``, ``needle_start <= i < needle_end`` and ``inp ==
  prompt_ids[i]``, then ``+= 1/(needle_end - needle_start)``).

The reference, too, scores the first answer token from the prompt's last query: it runs the
prompt without its last token (``:289``, ``input_ids[:, :-1]``) and its decoding loop starts by
feeding that token (``:290``, ``decode(q_outputs, input_ids[:, -1], 50)``; ``:237-245``), so the
step that emits the first answer token attends from the last prompt token, exactly as our prompt
pass does. Neither skips the first answer token.

Only trials whose answer recalls the needle count: ROUGE-1 recall > 0.5 from Google's
``rouge-score`` package with the Porter stemmer, as the reference (``:63``,
``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)``; ``:296-298``, ``score(real_needle,
response)['rouge1'].recall * 100 > 50``). The ``retrieval`` score is the mean over those trials
(``:230-233, :300``: a per-trial score is appended only for counted trials, then ``np.mean``).
When no trial counts there is nothing to score, and the analyzer stops with an error saying so.
Heads are scored per query head (under GQA the pattern is per query head already).

Decoding stops (``stop``): ``sentence`` (default) at EOS / end-of-turn (not scored), or after a
token that ends a sentence or line (the prompt asks for one sentence); ``newline`` (the
reference, ``:246``) only after a newline token, which is scored first, EOS does not stop it.
Budget ``max_new_tokens``: default needle length + 8; the reference decodes at most 50.

The ``paper`` preset: ``scoring=reference``, ``rouge_reference=needle`` (the whole needle
sentence, the reference's ``real_needle``), ``stop=newline``, ``max_new_tokens=50``. Where the
default departs: distinct positions; ROUGE against the answer phrase (with our needles a wrong
answer that repeats the question can pass against the sentence); stop at a sentence end or EOS
with a budget of needle length + 8. Always: our needles and haystack (``headscope.tasks.needle``)
rather than the reference's, and the needle span located exactly (the reference searches for a
window whose token set overlaps the needle's by more than 90%, ``find_needle_idx``, ``:249-259``;
its span has the needle's token count without the leading space, ours includes the space token
when the tokenizer makes one).

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

Choices (recorded in provenance): greedy decoding; ``stop``; ``max_new_tokens``; ROUGE
reference; ``scoring``; threshold 0.1 for "retrieval head".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.generation import stop_token_ids
from headscope.interventions import MaskQuery
from headscope.progress import progress_bar
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import DecodingTask
from headscope.trace import last_query_argmax, trace

Head = tuple[int, int]


SCORINGS: tuple[str, ...] = ("distinct", "reference")
STOPS: tuple[str, ...] = ("sentence", "newline")
_SCORER: list[Any] = []


def rouge1_recall(response: str, reference: str) -> float:
    """ROUGE-1 recall of ``response`` against ``reference`` with Google's ``rouge-score`` and the
    Porter stemmer (as the reference code scores its needle test)."""
    if not _SCORER:
        from rouge_score import rouge_scorer

        _SCORER.append(rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True))
    return float(_SCORER[0].score(reference, response)["rouge1"].recall)


def accumulate_copies(events: list[tuple[int, torch.Tensor]], ids: torch.Tensor, span: tuple[int, int],
                      scoring: str) -> np.ndarray:
    """A trial's copy score per head, before dividing by the needle length.

    Args:
        events: one ``(emitted token y, top-1 key position per head (n_layers, n_heads))`` per
            decoding step, the first from the prompt pass.
        ids: (1, pos) prompt ids (the needle lies in them).
        span: needle ``(start, end)``, end exclusive.
        scoring: ``distinct`` (number of distinct needle positions copied) or ``reference``
            (number of copying steps, a position copied again counts again).

    Returns:
        (n_layers, n_heads) float array.
    """
    if scoring not in SCORINGS:
        raise HeadscopeError(f"unknown retrieval scoring '{scoring}': choose {', '.join(SCORINGS)}.")
    start, end = span
    if not events:
        return np.zeros((0, 0))
    shape = tuple(events[0][1].shape)
    hits = np.zeros(shape)
    seen: list[list[set[int]]] = [[set() for _ in range(shape[1])] for _ in range(shape[0])]
    for y, top in events:
        inside = (top >= start) & (top < end)
        for layer, head in inside.nonzero().tolist():
            p = int(top[layer, head])
            if int(ids[0, p]) == y:
                seen[layer][head].add(p)
                hits[layer, head] += 1
    if scoring == "reference":
        return hits
    return np.array([[len(s) for s in row] for row in seen], dtype=float)


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
    scoring: str = "distinct",
    stop: str = "sentence",
    prefill_chunk: int = PREFILL_CHUNK,
) -> tuple[str, np.ndarray | None]:
    """Greedily decode one trial; optionally score copy events per head.

    The prompt but its last token is prefilled into the KV cache ``prefill_chunk`` queries at a
    time with nothing captured (:func:`prefill`); the last prompt token is then the first
    decoding step (as in the reference), so every traced attention row is one query over all
    keys: (1, heads, 1, n).

    ``stop="sentence"``: stop at EOS / end-of-turn, or (``sentence_end``) after a token ending a
    sentence or line; ``stop="newline"`` (the reference): only after a newline token.

    Returns:
        ``(response text, copied)`` where ``copied`` is the (n_layers, n_heads) count of
        :func:`accumulate_copies` under ``scoring`` (None when ``score`` is False).
    """
    if stop not in STOPS:
        raise HeadscopeError(f"unknown stop rule '{stop}': choose {', '.join(STOPS)}.")
    ids = trial.tokens
    prompt = ids
    stops = stop_token_ids(model.tokenizer) if stop == "sentence" else set()
    events: list[tuple[int, torch.Tensor]] = []
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
            events.append((y, tr.reduced("top1")[0].cpu()))  # (layer, head) key positions
        out.append(y)
        step_input = torch.tensor([[y]], dtype=ids.dtype)
        ids = torch.cat([ids, step_input], dim=1)
        piece = model.tokenizer.decode([y])
        if stop == "newline" and "\n" in piece:
            break
        if stop == "sentence" and sentence_end and _ends_sentence(piece):
            break
    counts = None
    if score:
        counts = accumulate_copies(events, prompt, trial.needle_span, scoring) if events else np.zeros(
            (model.n_layers, model.n_heads))
    return model.tokenizer.decode(out, skip_special_tokens=True), counts


def needle_accuracy(model: Any, trials: list[Any], max_new: list[int], reference: str,
                    interventions: tuple[Any, ...] = (), progress: bool = False, label: str = "needle",
                    stop: str = "sentence") -> float:
    """Fraction of trials answered (ROUGE-1 recall > 0.5) under ``interventions``."""
    ok = 0
    for trial, n_new in progress_bar(list(zip(trials, max_new, strict=True)), label, enabled=progress):
        text, _ = greedy_decode(model, trial, n_new, interventions, score=False, stop=stop)
        ok += rouge1_recall(text, trial.needle if reference == "needle" else trial.answer) > 0.5
    return ok / max(1, len(trials))


def trial_units(model: Any, task: Any, options: dict[str, Any]) -> list[int]:
    """Every needle trial of a run (its ``trials`` option, default all), the units of a shard."""
    chosen = options.get("trials")
    return sorted({int(i) for i in chosen}) if chosen is not None else list(range(len(task.trials(model))))


def no_recalled_needle(records: list[dict[str, Any]], rouge_reference: str) -> HeadscopeError:
    """The error for a run in which no trial passed the ROUGE-1 filter (nothing to score)."""
    first = str(records[0].get("response", "")) if records else ""
    return HeadscopeError(
        f"no trial passed the ROUGE-1 filter (recall > 0.5 against the {rouge_reference}): the model recalled none of "
        f"the {len(records)} needles (first response {first[:60]!r}), so no head can be scored; use shorter "
        "context_lengths, a larger max_new_tokens or a stronger model.")


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
    records = sorted((r for p in parts for r in p.provenance["choices"]["trials"]), key=lambda r: r["trial"])
    if not n_counted:
        raise no_recalled_needle(records, str(prov["options"]["rouge_reference"]))
    scores = total / n_counted
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


def _check_options(rouge_reference: str, scoring: str, stop: str) -> None:
    """One-line errors for an unknown ROUGE reference, scoring or stop rule."""
    if rouge_reference not in ("needle", "answer"):
        raise HeadscopeError("rouge_reference must be 'needle' or 'answer'.")
    if scoring not in SCORINGS:
        raise HeadscopeError(f"unknown retrieval scoring '{scoring}': choose {', '.join(SCORINGS)}.")
    if stop not in STOPS:
        raise HeadscopeError(f"unknown stop rule '{stop}': choose {', '.join(STOPS)}.")


def _select_trials(model: Any, task: Any, trials: list[int] | None, check_masking: bool) -> tuple[list[int], list[Any]]:
    """The run's trial indices (sorted, unique; default all) and the trials themselves."""
    every = task.trials(model)
    if trials is not None:
        bad = [i for i in trials if not 0 <= int(i) < len(every)]
        if bad:
            raise HeadscopeError(f"trial {bad[0]} is out of range: the task has trials 0..{len(every) - 1}.")
        if check_masking:
            raise HeadscopeError("check_masking needs every trial's scores: run it without trials= or sharding "
                                 "(e.g. on the merged result's top heads with `headscope ablate`).")
    indices = list(range(len(every))) if trials is None else sorted({int(i) for i in trials})
    return indices, [every[i] for i in indices]


def _score_trials(model: Any, indices: list[int], chosen: list[Any], budgets: list[int], rouge_reference: str,
                  scoring: str, stop: str, prefill_chunk: int, progress: bool) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decode every trial; sum the counted trials' copy scores / needle length.

    Returns:
        ``(total, records)``: the (n_layers, n_heads) sum over counted trials, and one record
        per trial (its response, ROUGE-1 recall and whether it counted).
    """
    total = np.zeros((model.n_layers, model.n_heads))
    records = []
    for index, trial, n_new in progress_bar(list(zip(indices, chosen, budgets, strict=True)), "retrieval",
                                            enabled=progress):
        text, copied = greedy_decode(model, trial, n_new, scoring=scoring, stop=stop, prefill_chunk=prefill_chunk)
        reference = trial.needle if rouge_reference == "needle" else trial.answer
        recall = rouge1_recall(text, reference)
        counted = recall > 0.5
        if counted:
            total += copied / (trial.needle_span[1] - trial.needle_span[0])
        records.append({"trial": index, "context_len": trial.context_len, "depth": trial.depth, "needle": trial.needle,
                        "response": text, "rouge1_recall": round(recall, 4), "counted": bool(counted)})
    return total, records


def _retrieval_choices(options: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]],
                       causal: dict[str, Any] | None) -> dict[str, Any]:
    """The provenance ``choices`` of a run with ``options`` as called."""
    stop, scoring, rouge_reference, prefill_chunk = (options[k] for k in ("stop", "scoring", "rouge_reference",
                                                                          "prefill_chunk"))
    return {
        "decoding": "greedy with the KV cache (each step feeds only the new token), " + (
            "stop at EOS/end-of-turn, at a token ending a sentence or line" if stop == "sentence"
            else "stop after a newline token (scored; EOS does not stop)") + ", or after max_new_tokens",
        "copy_event": "top-1 attention of the last query inside the needle span on a token equal to "
        "the emitted token, from the first answer token (the step that feeds the last prompt token) on; " + (
            "distinct needle positions per head / needle length" if scoring == "distinct"
            else "1/needle length per copying step (reference)"),
        "counted_trials": f"ROUGE-1 recall (rouge-score, Porter stemmer) vs the {rouge_reference} > 0.5",
        "gqa": "per query head",
        "memory": f"prompt prefilled into the KV cache {prefill_chunk or 'all'} queries per pass with nothing "
        "captured; each decoding step's last-query-row argmax reduced inside the hook; no pattern kept",
        "summary": summary,
        "trials": records,
        "causal_check": causal,
    }


@register_analyzer(
    "retrieval_heads",
    summary="retrieval score (Wu et al. 2024): copy-paste attention from the needle during greedy decoding",
    requires=DecodingTask,
    shard=_shard_spec(),
    presets={"paper": {"scoring": "reference", "rouge_reference": "needle", "stop": "newline", "max_new_tokens": 50}},
)
def retrieval_heads(
    model: Any,
    task: Any,
    threshold: float = 0.1,
    rouge_reference: str = "answer",
    max_new_tokens: int | None = None,
    scoring: str = "distinct",
    stop: str = "sentence",
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
        max_new_tokens: decoding budget per trial (default: needle tokens + 8; paper: 50).
        scoring: ``distinct`` (default: distinct needle positions copied) or ``reference`` (paper:
            1/|k| per copying step).
        stop: ``sentence`` (default: EOS, or a sentence/line end) or ``newline`` (paper).
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
    _check_options(rouge_reference, scoring, stop)
    indices, chosen = _select_trials(model, task, trials, check_masking)
    budgets = [max_new_tokens or (t.needle_span[1] - t.needle_span[0] + 8) for t in chosen]
    total, records = _score_trials(model, indices, chosen, budgets, rouge_reference, scoring, stop, prefill_chunk,
                                   progress)
    n_counted = sum(r["counted"] for r in records)
    if not n_counted and trials is None:  # a shard may count none; the merge checks the whole run
        raise no_recalled_needle(records, rouge_reference)
    scores = total / n_counted if n_counted else total
    summary = summarize(scores, records, threshold)
    causal = None
    if check_masking:
        causal = masking_check(model, chosen, budgets, scores, mask_k, n_random, threshold, seed,
                               rouge_reference, progress, base_accuracy=summary["accuracy"], stop=stop)
    options = {"threshold": threshold, "rouge_reference": rouge_reference, "max_new_tokens": max_new_tokens,
               "scoring": scoring, "stop": stop,
               "check_masking": check_masking, "mask_k": mask_k, "n_random": n_random, "seed": seed,
               "trials": trials, "prefill_chunk": prefill_chunk}
    provenance = build_provenance(model, task=task.describe(), analyzer="retrieval_heads", options=options,
                                  choices=_retrieval_choices(options, summary, records, causal), seed=seed)
    return retrieval_scores(model, task, scores, n_counted, provenance)


def masking_check(model: Any, trials: list[Any], budgets: list[int], scores: np.ndarray, k: int, n_random: int,
                  threshold: float, seed: int, reference: str, progress: bool,
                  base_accuracy: float | None = None, stop: str = "sentence") -> dict[str, Any]:
    """Needle accuracy with the top-k retrieval heads masked vs k random non-retrieval heads."""
    order = np.argsort(-scores, axis=None, kind="stable")
    top: list[Head] = [tuple(int(x) for x in np.unravel_index(i, scores.shape)) for i in order[:k]]  # type: ignore[misc]
    pool = [(lay, h) for lay in range(model.n_layers) for h in range(model.n_heads)
            if scores[lay, h] <= threshold and (lay, h) not in top]
    if len(pool) < k:
        raise HeadscopeError(f"only {len(pool)} non-retrieval heads to draw {k} random heads from: lower mask_k.")
    if base_accuracy is None:
        base_accuracy = needle_accuracy(model, trials, budgets, reference, (), progress, "unmasked", stop)
    top_acc = needle_accuracy(model, trials, budgets, reference, (MaskQuery(top, scale=0.0),), progress, "top-k masked",
                              stop)
    random_runs = []
    for s in range(n_random):
        gen = torch.Generator().manual_seed(seed + s)
        pick = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:k].tolist()]
        acc = needle_accuracy(model, trials, budgets, reference, (MaskQuery(pick, scale=0.0),), progress,
                              f"random masked {s}", stop)
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
