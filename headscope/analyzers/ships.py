"""Ships: safety-head importance by single-head ablation (Zhou et al. 2024, "On the Role of
Attention Heads in Large Language Model Safety", Sec. 3).

For each harmful request ``x`` (task ``safety``) and each head ``h`` ablated alone::

    Ships(x, h) = KL( p_base(. | x) || p_ablated_h(. | x) )

over the next-token distribution at the prompt's last token (after the chat template's
assistant header, i.e. the first answer token). The head's score is the mean over requests
(``stderr`` over requests is recorded). A head whose ablation moves the first-token distribution
most (e.g. away from "I'm sorry") scores highest.

Choices (recorded): ``ablation`` -- ``query_scale`` (default, the paper's: query times ``eps``,
near-uniform attention), ``mean`` (z = its mean over the harmless prompts' real positions) or
``zero``; ``eps``; last real token of right-padded batches; natural-log KL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.core import final_logits
from headscope.progress import progress_bar
from headscope.results import HeadScores, build_provenance
from headscope.safety.ablation import build_ablation, check_ablation, masked_mean_z
from headscope.trace.stream import capture_stream

Head = tuple[int, int]


def select_heads(model: Any, heads: str | None, layers: str | None = None) -> list[Head]:
    """Heads to score: ``heads`` ("L.H,...") or every head of ``layers`` ("A-B" or "A,B,..."), default all."""
    if heads:
        return model.parse_heads(heads)
    if layers:
        chosen: list[int] = []
        for part in str(layers).split(","):
            a, _, b = part.partition("-")
            try:
                chosen += list(range(int(a), int(b) + 1)) if b else [int(a)]
            except ValueError:
                raise HeadscopeError(f"bad layers '{layers}': write e.g. 12-23 or 3,5,7.") from None
        for layer in chosen:
            model.check_head(layer, 0)
        return [(layer, h) for layer in chosen for h in range(model.n_heads)]
    return [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]


def kl_div(base_logp: torch.Tensor, new_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p_new) per row from log-probabilities (batch, d_vocab) -> (batch,)."""
    return (base_logp.exp() * (base_logp - new_logp)).sum(-1)


def last_logprobs(model: Any, tokens: torch.Tensor, last: torch.Tensor, interventions: list[Any], batch_size: int | None) -> torch.Tensor:
    """Log-probabilities of the next token at each row's last real position: (batch, d_vocab).

    The final norm's output is captured at those positions only and unembedded there, so the
    (batch, pos, d_vocab) logits of every position are never computed.
    """
    normed = capture_stream(model, tokens, ["ln_final.hook_normalized"], interventions, batch_size, positions=last)
    return final_logits(model, normed["ln_final.hook_normalized"]).log_softmax(-1)


def ablation_means(model: Any, task: Any, ablation: str, heads: list[Head], batch_size: int | None) -> dict[int, torch.Tensor] | None:
    """Mean z over the harmless prompts (only for ``mean`` ablation)."""
    if ablation != "mean":
        return None
    tokens, last = task.batch(model, "harmless")
    return masked_mean_z(model, tokens, last, [layer for layer, _ in heads], batch_size)


@register_analyzer(
    "ships",
    summary="Ships (Zhou et al. 2024): KL of the last-token distribution when one head is ablated (query scaling)",
    tasks=("safety",),
)
def ships(
    model: Any,
    task: Any,
    ablation: str = "query_scale",
    eps: float = 1e-2,
    heads: str | None = None,
    layers: str | None = None,
    batch_size: int | None = 16,
    progress: bool = False,
) -> HeadScores:
    """Ships score of every (selected) head on the harmful requests.

    Args:
        ablation: ``query_scale`` (default), ``mean`` or ``zero``.
        eps: query scale for ``query_scale``.
        heads: only these heads ("L.H,..."); others get NaN.
        layers: only the heads of these layers ("A-B" or "A,B").
        batch_size: prompts per forward pass.
        progress: progress bar over heads.

    Returns:
        HeadScores with metric ``ships_kl`` (mean KL, nats) and ``stderr``, ``n``.
    """
    check_ablation(ablation)
    chosen = select_heads(model, heads, layers)
    tokens, last = task.batch(model, "harmful")
    means = ablation_means(model, task, ablation, chosen, batch_size)
    base = last_logprobs(model, tokens, last, [], batch_size)
    shape = (model.n_layers, model.n_heads)
    score, err = np.full(shape, np.nan), np.full(shape, np.nan)
    for head in progress_bar(chosen, "ships", enabled=progress):
        kl = kl_div(base, last_logprobs(model, tokens, last, build_ablation(ablation, [head], eps, means), batch_size))
        score[head] = float(kl.mean())
        err[head] = float(kl.std() / np.sqrt(len(kl))) if len(kl) > 1 else 0.0
    refuse_top = [model.tokenizer.decode([int(i)]) for i in base.argmax(-1)]
    prov = build_provenance(
        model, task=task.describe(), analyzer="ships",
        options={"ablation": ablation, "eps": eps, "heads": heads, "layers": layers, "batch_size": batch_size},
        choices={
            "ablation": ablation, "eps": eps if ablation == "query_scale" else None,
            "mean_reference": "harmless prompts, real positions" if ablation == "mean" else None,
            "distribution": "next token at the last real token of each harmful prompt (chat template applied)" if task.uses_chat(model) else "next token at the last token",
            "kl": "KL(p_base || p_ablated), natural log, mean over prompts",
            "base_top_tokens": refuse_top,
        },
    )
    common = {"model": model.spec, "task": task.name, "analyzer": "ships"}
    kv = np.array([[model.kv_head(h) for h in range(model.n_heads)]] * model.n_layers)
    return HeadScores.from_matrix(score, metric="ships_kl", extra={"stderr": err, "n": int(tokens.shape[0]), "kv_head": kv}, provenance=prov, **common)
