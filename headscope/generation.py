"""Greedy generation with head interventions (batched, no KV cache).

``greedy_generate`` decodes several prompts at once. Rows are right-padded: under causal
attention a row's real positions never attend to the padding after them, so no attention mask
is needed; each step reruns the whole (padded) batch with the interventions applied
(:func:`headscope.trace.stream.capture_stream`) and unembeds only each row's last real
position. Without a KV cache each step costs a full forward pass, which is fine for
the short answers used in behavioural checks (refusal, retrieval).

Stopping: a row stops at EOS / end-of-turn tokens (:func:`stop_token_ids`) or after
``max_new_tokens``. (:func:`headscope.analyzers.retrieval_heads.greedy_decode` is the
single-prompt decoder that also scores copy events per head.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headscope.lens.core import final_logits
from headscope.progress import progress_bar
from headscope.tasks.safety_requests import pad_id, pad_right
from headscope.trace.stream import capture_stream

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
        interventions: :mod:`headscope.interventions` objects applied at every step.
        batch_size: prompts decoded together.

    Returns:
        The generated ids per prompt (stop token excluded).
    """
    stops = stop_token_ids(model.tokenizer)
    pad = pad_id(model.tokenizer)
    out: list[list[int]] = []
    starts = list(range(0, len(prompts), batch_size))
    for start in progress_bar(starts, "generating", enabled=progress and len(starts) > 1):
        seqs = [list(p) for p in prompts[start : start + batch_size]]
        new: list[list[int]] = [[] for _ in seqs]
        live = list(range(len(seqs)))
        for _ in range(max_new_tokens):
            if not live:
                break
            for row in (seqs[i] for i in live):
                model.check_length(len(row))
            tokens, last = pad_right([seqs[i] for i in live], pad)
            normed = capture_stream(model, tokens, ["ln_final.hook_normalized"], list(interventions), positions=last)
            nxt = final_logits(model, normed["ln_final.hook_normalized"]).argmax(-1).tolist()
            still = []
            for i, y in zip(live, nxt, strict=True):
                if y in stops:
                    continue
                seqs[i].append(int(y))
                new[i].append(int(y))
                still.append(i)
            live = still
        out.extend(new)
    return out
