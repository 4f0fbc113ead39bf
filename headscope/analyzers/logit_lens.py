"""Per-head logit lens score: how often a head's own output already names the next token.

For each head, its output at a position (``z @ W_O``, no bias) goes through the final norm onto
the vocabulary (:mod:`headscope.lens.core`; nostalgebraist 2020's logit lens, applied per head
as in Elhage et al. 2021's direct-path view). On the task's prompts (any task with
``tokens(model)``; on ``induction`` the next token of the second copy is the copied token) we
score, over the scored positions:

- ``lens_next_topk``: fraction of positions whose actual next token is in the head's top-k;
- ``lens_next_logit``: mean lens logit of the actual next token minus the mean lens logit over
  the vocabulary (a centred direct effect; positive = the head promotes it).

Scored positions: the second half of each prompt's *real* tokens, ``T//2 + 1 .. T-2`` with ``T``
the prompt's own length (the repeated block on ``induction``), at most ``max_positions`` per
prompt (evenly spaced), because each head's lens costs a (positions x d_model x d_vocab)
product. On contrastive tasks (``ioi``, ``facts``, ``user_file``, ``induction_contrast``) the
prompts are right-padded to a common width; ``T`` is then ``END + 1``, so no padding position
and no padding target (the token at ``p + 1 <= T - 1``) is ever scored.

Preset ``paper``: ``ln=residual``, the direct-path convention (Elhage et al. 2021): the head's
exact linear share of the model's final logits, with the final norm's scale taken from the
residual it actually normalises. There is no reference code for the per-head score itself
(``top_k`` and the positions are headscope's).

Choices recorded in provenance: the final-norm convention ``ln`` (``residual``: divide by the
residual's final-norm scale; ``recompute``: normalise each head vector on its own), ``top_k``,
biases excluded, positions. Token-level outputs: :func:`headscope.lens.decode.decode_heads`
(``headscope lens decode``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.core import check_ln_mode, lens_logits
from headscope.progress import progress_bar
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import ContrastiveTask, PromptTask


def scored_positions(n_pos: int, max_positions: int) -> list[int]:
    """Second-half positions of an ``n_pos``-token prompt that have a next token, at most
    ``max_positions`` (evenly spaced)."""
    pos = list(range(n_pos // 2 + 1, n_pos - 1))
    if not pos:
        raise HeadscopeError("prompts are too short for the lens score: use at least 4 tokens.")
    if len(pos) > max_positions:
        idx = np.linspace(0, len(pos) - 1, max_positions).round().astype(int)
        pos = [pos[i] for i in sorted(set(idx.tolist()))]
    return pos


def prompts_and_lengths(model: Any, task: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's prompts (n, pos) and each prompt's real length (n,): ``END + 1`` for the
    right-padded prompts of contrastive tasks, the full width otherwise."""
    if isinstance(task, ContrastiveTask):
        batch = task.batch(model)
        return batch.clean, batch.end + 1
    tokens = task.tokens(model)
    tokens = tokens if torch.is_tensor(tokens) else tokens.clean
    return tokens, torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)


@register_analyzer(
    "logit_lens",
    summary="training-free per-head logit lens: does the head's output promote the actual next token?",
    presets={"paper": {"ln": "residual"}},
    requires=PromptTask,
)
def logit_lens(
    model: Any,
    task: Any,
    top_k: int = 10,
    ln: str = "residual",
    max_positions: int = 16,
    max_prompts: int = 4,
    progress: bool = False,
) -> HeadScores:
    """Score every head by its training-free lens on the task's prompts.

    Args:
        top_k: a next token counts as promoted when it is in the head's top ``top_k``.
        ln: final-norm convention, ``residual`` or ``recompute``.
        max_positions: scored positions per prompt.
        max_prompts: prompts used (the first ones).
        progress: progress bar over layers.

    Returns:
        HeadScores with metrics ``lens_next_topk`` and ``lens_next_logit``.
    """
    from headscope.trace import trace
    from headscope.trace.stream import capture_stream

    check_ln_mode(ln)
    if not isinstance(task, PromptTask):
        raise HeadscopeError(f"task '{task.name}' has no token prompts: use --task induction (or another prompt task).")
    tokens, lengths = prompts_and_lengths(model, task)
    tokens, lengths = tokens[:max_prompts], lengths[:max_prompts]
    per_prompt = [scored_positions(int(n), max_positions) for n in lengths]
    rows = torch.tensor([i for i, ps in enumerate(per_prompt) for _ in ps])  # (n_scored,)
    pos = torch.tensor([p for ps in per_prompt for p in ps])  # (n_scored,)
    target = tokens[rows, pos + 1]  # (n_scored,), always a real token: pos + 1 <= length - 1
    scale = capture_stream(model, tokens, ["ln_final.hook_scale"])["ln_final.hook_scale"][rows, pos]  # (n_scored, 1)
    shape = (model.n_layers, model.n_heads)
    hit, logit = np.zeros(shape), np.zeros(shape)
    for layer in progress_bar(range(model.n_layers), "logit lens", enabled=progress):
        res = trace(model, tokens, acts=["result"], layers=[layer]).get("result", layer)[rows, pos].float().cpu()
        for head in range(model.n_heads):
            lg = lens_logits(model, res[:, head], scale, ln)  # (n_scored, d_vocab)
            own = lg.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            rank = (lg >= own.unsqueeze(-1)).sum(-1) - 1  # ties count against the target
            hit[layer, head] = float((rank < top_k).float().mean())
            logit[layer, head] = float((own - lg.mean(-1)).mean())
    common = {"model": model.spec, "task": task.name, "analyzer": "logit_lens"}
    n = int(len(pos))
    prov = build_provenance(
        model, task=task.describe(), analyzer="logit_lens",
        options={"top_k": top_k, "ln": ln, "max_positions": max_positions, "max_prompts": max_prompts},
        choices={
            "ln": ln, "ln_meaning": "divide by the residual's final-norm scale" if ln == "residual" else "normalise the head vector on its own",
            "biases": "b_O, final-norm bias and b_U excluded",
            "positions": per_prompt, "prompt_lengths": lengths.tolist(),
            "position_rule": "second half of each prompt's real tokens (right padding never scored)",
            "target": "the actual next token (ties count against it)",
        },
    )
    return HeadScores.concat(
        [HeadScores.from_matrix(hit, metric="lens_next_topk", extra={"n": n}, **common),
         HeadScores.from_matrix(logit, metric="lens_next_logit", extra={"n": n}, **common)],
        provenance=prov,
    )
