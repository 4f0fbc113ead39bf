"""RazorAttention-style echo and induction scores (Tang et al. 2024, "RazorAttention: Efficient
KV Cache Compression Through Retrieval Heads").

On long repeated random sequences ``[BOS] R R (R ...)`` (the ``induction`` task; use
``-o n_repeats=4 -o seq_len=...`` for longer inputs), for every query row in the second and
later copies of ``R``:

- ``echo`` = attention mass on the earlier positions holding the *same* token as the query;
- ``induction`` = attention mass on the positions right *after* those earlier copies.

Each score is the mean over those query rows (each row's mass is a fraction of 1, since rows of
the attention pattern sum to 1) and over prompts. RazorAttention keeps a full KV cache for the
top echo and induction heads; since a KV cache is stored per KV head, ``kv_group="max"``
replaces each query head's score by the maximum over its KV group (reported per query head,
with the ``kv_head`` column), ``kv_group="none"`` keeps the per-query-head scores.

Choices (recorded in provenance): query rows = all positions of copies 2..n (not BOS, not
copy 1); masks from the actual tokens; BOS as in the task; the per-KV-group reduction.
Patterns are reduced inside the hook (no pattern is cached).

Reference: Huawei's implementation, ``mindspore-ai/golden-stick`` (commit a50ddc9),
``mindspore_gs/experimental/long_context_compress/razor_attention/``: the input is one sequence
of 2500 random token ids repeated 4 times after BOS (``razor_attention.py:39-40, 139-142``; here
``-o seq_len=... -o n_repeats=4`` on the ``induction`` task); each head's score is the mean of
its attention matrix times the echo / induction mask (``attention_wrappers.py:101-119``), which
is headscope's mean over query rows times a constant (the reference's masks ignore the BOS
shift, so one extra row of copy 1 counts; negligible at its length); scores are reduced to the maximum over each KV group
(``attention_wrappers.py:131-143``), which is ``kv_group="max"``. Preset ``paper``:
``kv_group=max``. The KV-cache policy (``--export-kv-policy``, :mod:`.kv_policy`) ranks KV groups
and keeps echo 1% and induction 14% of them by default, as the reference does.
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

KV_GROUP_MODES = ("none", "max")


def echo_induction_masks(tokens: torch.Tensor, first_query: int) -> torch.Tensor:
    """(batch, 2, q, k) float masks for echo and induction, zero for queries before
    ``first_query``.

    echo[q, k] = 1 if k < q and tokens[k] == tokens[q]; induction[q, k] = echo[q, k - 1].
    """
    _, pos = tokens.shape
    q = torch.arange(pos).unsqueeze(1)
    k = torch.arange(pos).unsqueeze(0)
    echo = (tokens.unsqueeze(2) == tokens.unsqueeze(1)) & (k < q) & (q >= first_query)
    induction = torch.zeros_like(echo)
    induction[:, :, 1:] = echo[:, :, :-1]
    return torch.stack([echo, induction], dim=1).float()


def _reducer(first_query: int) -> Reducer:
    def fn(pattern: torch.Tensor, ctx: ReduceContext) -> torch.Tensor:
        if "razor_masks" not in ctx.cache:
            ctx.cache["razor_masks"] = echo_induction_masks(ctx.tokens.cpu(), first_query).to(pattern.device, pattern.dtype)
        n_rows = pattern.shape[-2] - first_query
        return torch.einsum("bhqk,bmqk->bhm", pattern, ctx.cache["razor_masks"]) / n_rows

    return Reducer("razor_echo_induction", "pattern", fn)


def group_max(values: np.ndarray, model: Any) -> np.ndarray:
    """Replace each query head's value by the max over its KV group: (n_layers, n_heads)."""
    out = values.copy()
    for heads in model.kv_groups().values():
        out[:, heads] = values[:, heads].max(axis=1, keepdims=True)
    return out


@register_analyzer(
    "echo_induction",
    summary="RazorAttention echo and induction scores on repeated random tokens (per head or KV group)",
    requires=RepeatedPromptTask,
    presets={"paper": {"kv_group": "max"}},
)
def echo_induction(
    model: Any,
    task: Any,
    kv_group: str = "none",
    batch_size: int = 4,
    progress: bool = False,
) -> HeadScores:
    """Echo and induction scores of every head (Tang et al. 2024).

    Args:
        kv_group: ``none`` (per query head) or ``max`` (max over the KV group).
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        HeadScores with metrics ``echo`` and ``induction`` (``stderr`` over prompts).
    """
    if kv_group not in KV_GROUP_MODES:
        raise HeadscopeError(f"kv_group must be one of {', '.join(KV_GROUP_MODES)}; got '{kv_group}'.")
    if getattr(task, "n_repeats", 2) < 2:
        raise HeadscopeError("echo/induction scores need repeated copies: use -o n_repeats=2 or more.")
    tokens = task.tokens(model)
    n_bos = int(tokens.shape[1] - task.seq_len * task.n_repeats)
    first_query = n_bos + task.seq_len
    tr = trace(model, tokens, reducers=[_reducer(first_query)], batch_size=batch_size,
               progress="echo/induction" if progress else False)
    per_prompt = tr.reduced("razor_echo_induction").double().cpu().numpy()  # (batch, layer, head, 2)
    n = per_prompt.shape[0]
    mean = per_prompt.mean(0)
    stderr = per_prompt.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    kv = model.kv_head_matrix()
    common = {"model": model.spec, "task": task.name, "analyzer": "echo_induction"}
    parts = []
    for i, metric in enumerate(("echo", "induction")):
        values = mean[:, :, i] if kv_group == "none" else group_max(mean[:, :, i], model)
        parts.append(HeadScores.from_matrix(values, metric=metric,
                                            extra={"stderr": stderr[:, :, i], "n": n, "kv_head": kv}, **common))
    provenance = build_provenance(
        model,
        task=task.describe(),
        analyzer="echo_induction",
        options={"kv_group": kv_group, "batch_size": batch_size},
        choices={
            "measure": "attention mass on echo / induction positions, mean over query rows of copies 2..n, "
            "then over prompts",
            "query_rows": f"positions {first_query}..end",
            "kv_group": kv_group,
            "stderr": "per query head, before any KV-group reduction",
            "bos": bool(n_bos),
        },
        seed=task.describe().get("seed"),
    )
    return HeadScores.concat(parts, provenance=provenance)
