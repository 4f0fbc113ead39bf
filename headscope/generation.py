"""Greedy generation with head interventions (batched, with the KV cache).

``greedy_generate`` decodes several prompts at once. Prompts are grouped by length, so a batch
needs neither padding nor an attention mask, and each group is decoded incrementally: one
prefill pass over the prompts, then one single-token pass per new token that reuses the Hugging
Face KV cache (:func:`headscope.trace.trace` with ``use_cache``). Interventions are applied in
every pass, so the cached keys/values of the prompt already reflect them. Logits are computed
at the last position only. Rows that have stopped keep being fed (their output is no longer
recorded) until the whole group has stopped or reached ``max_new_tokens``.

Stopping: a row stops at EOS / end-of-turn tokens (:func:`stop_token_ids`) or after
``max_new_tokens``. (:func:`headscope.analyzers.retrieval_heads.greedy_decode` is the
single-prompt decoder that also scores copy events per head.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.progress import progress_bar
from headscope.trace import trace

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")


def stop_token_ids(tokenizer: Any) -> set[int]:
    """EOS plus the end-of-turn tokens the tokenizer knows."""
    ids = {tokenizer.eos_token_id}
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != unk:
            ids.add(tid)
    return {int(i) for i in ids if i is not None}


def greedy_generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    interventions: Sequence[Any] = (),
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts under ``interventions``.

    Args:
        prompts: token ids per prompt (already formatted, e.g. chat template applied).
        max_new_tokens: cap on generated tokens per prompt.
        interventions: :mod:`headscope.interventions` objects applied at every step (they must
            act on every position alike, as head ablations do, since each step sees only the
            new position).
        batch_size: most prompts decoded together (prompts of one length share a batch).

    Returns:
        The generated ids per prompt, in prompt order (stop token excluded).
    """
    stops = stop_token_ids(model.tokenizer)
    for p in prompts:
        model.check_length(len(p) + max_new_tokens)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    batches = [idx[s : s + batch_size] for idx in by_len.values() for s in range(0, len(idx), batch_size)]
    out: list[list[int]] = [[] for _ in prompts]
    for idx in progress_bar(batches, "generating", enabled=progress and len(batches) > 1):
        tokens = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long)
        live = [True] * len(idx)
        step_input, cache = tokens, None
        for _ in range(max_new_tokens):
            last = torch.full((len(idx),), step_input.shape[1] - 1, dtype=torch.long)
            tr = trace(model, step_input, interventions=list(interventions), use_cache=True,
                       past_key_values=cache, logit_positions=last)
            cache = tr.past_key_values
            nxt = tr.logits[:, -1].argmax(-1).cpu()
            for j, y in enumerate(nxt.tolist()):
                if not live[j]:
                    continue
                if y in stops:
                    live[j] = False
                else:
                    out[idx[j]].append(int(y))
            if not any(live):
                break
            step_input = nxt.view(-1, 1)
    return out
