"""All-heads attention-pattern scores from one batched forward pass.

Scores every head for three attention patterns on repeated random tokens:

- ``previous_token``: attention from position q to q-1;
- ``duplicate_token``: attention to earlier positions holding the same token;
- ``induction``: attention to the position right after an earlier copy of the current token
  (Olsson et al. 2022, "In-context Learning and Induction Heads").

Each score is the TransformerLens ``head_detector.detect_head`` "mul" measure: the fraction of a
head's attention mass (summed over all query positions) that falls inside the pattern's
(q, k) mask, computed per prompt and averaged over prompts. On the same tokens the numbers
equal ``detect_head`` to float precision; unlike it, one forward pass serves all three
patterns and every head, with no per-head Python loop and no activation cache: the masks are
built once per batch and each layer's pattern is reduced inside its hook by one einsum.

Choices (recorded in provenance): BOS as in the task (prepended by default); masks built from
the actual tokens (so accidental repeats count, as in TransformerLens); ``exclude_bos`` and
``exclude_current_token`` as in ``detect_head`` (both off by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import RepeatedPromptTask
from headscope.trace import ReduceContext, Reducer, trace

PATTERNS: tuple[str, ...] = ("previous_token", "duplicate_token", "induction")


def pattern_masks(tokens: torch.Tensor) -> torch.Tensor:
    """Detection masks for the three patterns.

    Args:
        tokens: (batch, pos) token ids.

    Returns:
        Float tensor (batch, 3, pos, pos): masks for previous_token, duplicate_token, induction,
        each lower-triangular, identical to TransformerLens's detection patterns.
    """
    batch, pos = tokens.shape
    q = torch.arange(pos).unsqueeze(1)
    k = torch.arange(pos).unsqueeze(0)
    previous = (k == q - 1).expand(batch, pos, pos)
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # (batch, q, k)
    duplicate = same & (k < q)
    induction = torch.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1]
    return torch.stack([previous, duplicate, induction], dim=1).float()


def _pattern_reducer(exclude_bos: bool, exclude_current_token: bool) -> Reducer:
    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        if "masks" not in ctx.cache:
            masks = pattern_masks(ctx.tokens.cpu()).to(pattern.device, pattern.dtype)
            keep = torch.ones(masks.shape[-2:], dtype=pattern.dtype, device=pattern.device)
            if exclude_bos:
                keep[:, 0] = 0
            if exclude_current_token:
                keep.fill_diagonal_(0)
            ctx.cache["masks"] = masks * keep
            ctx.cache["keep"] = keep
        inside = torch.einsum("bhqk,bmqk->bhm", pattern, ctx.cache["masks"])
        total = torch.einsum("bhqk,qk->bh", pattern, ctx.cache["keep"])
        return inside / total.unsqueeze(-1)  # (batch, head, 3)

    return Reducer("pattern_scores", "pattern", fn)


@register_analyzer(
    "pattern_scores",
    summary="previous-token, duplicate-token and induction scores for all heads (one forward pass)",
    requires=RepeatedPromptTask,
)
def pattern_scores(
    model: Any,
    task: Any,
    batch_size: int = 8,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    patterns: tuple[str, ...] | list[str] | str = PATTERNS,
    progress: bool = False,
) -> HeadScores:
    """Score every head for previous-token, duplicate-token and induction attention.

    Args:
        model: a loaded :class:`headscope.models.Model`.
        task: a task with ``tokens(model)`` (normally ``RepeatedTokensTask``).
        batch_size: prompts per forward pass (results do not depend on it).
        exclude_bos: zero attention to position 0 before scoring (as ``detect_head``).
        exclude_current_token: zero attention to the diagonal before scoring.
        patterns: which of ``previous_token, duplicate_token, induction`` to report.
        progress: show a progress bar over batches.

    Returns:
        HeadScores with one row per (layer, head, pattern): ``score`` is the mean over prompts
        of the fraction of attention inside the pattern, ``stderr`` its standard error over
        prompts, ``n`` the number of prompts, ``kv_head`` the head's KV group.
    """
    wanted = [patterns] if isinstance(patterns, str) else list(patterns)
    bad = [p for p in wanted if p not in PATTERNS]
    if bad:
        raise HeadscopeError(f"unknown pattern {bad[0]!r}: choose from {', '.join(PATTERNS)}.")
    tokens = task.tokens(model)
    tr = trace(
        model,
        tokens,
        reducers=[_pattern_reducer(exclude_bos, exclude_current_token)],
        batch_size=batch_size,
        progress="pattern scores" if progress else False,
    )
    per_prompt = tr.reduced("pattern_scores").double().cpu().numpy()  # (batch, layer, head, 3)
    n = per_prompt.shape[0]
    mean = per_prompt.mean(axis=0)
    stderr = per_prompt.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    kv = model.kv_head_matrix()
    task_info = task.describe()
    provenance = build_provenance(
        model,
        task=task_info,
        analyzer="pattern_scores",
        options={"batch_size": batch_size, "exclude_bos": exclude_bos,
                 "exclude_current_token": exclude_current_token, "patterns": wanted},
        choices={
            "measure": "TransformerLens detect_head 'mul': attention mass inside the mask / total mass, "
            "per prompt, averaged over prompts",
            "bos": bool(tokens[0, 0].item() == model.bos_token_id) if model.bos_token_id is not None else False,
            "masks_from": "actual tokens (accidental repeats count)",
            "exclude_bos": exclude_bos,
            "exclude_current_token": exclude_current_token,
        },
        seed=task_info.get("seed"),
    )
    parts = [
        HeadScores.from_matrix(
            mean[:, :, PATTERNS.index(p)],
            model=model.spec,
            task=task.name,
            analyzer="pattern_scores",
            metric=p,
            extra={"stderr": stderr[:, :, PATTERNS.index(p)], "n": n, "kv_head": kv},
        )
        for p in wanted
    ]
    return HeadScores.concat(parts, provenance=provenance)
