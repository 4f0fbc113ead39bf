"""Ships: safety-head importance by single-head ablation (Zhou et al. 2024, "On the Role of
Attention Heads in Large Language Model Safety", Sec. 3).

For each harmful request ``x`` (task ``safety``) and each head ``h`` ablated alone::

    Ships(x, h) = KL( p_base(. | x) || p_ablated_h(. | x) )

over the next-token distribution at the prompt's last token (after the chat template's
assistant header, i.e. the first answer token). The head's score is the mean over requests
(``stderr`` over requests is recorded). A head whose ablation moves the first-token distribution
most (e.g. away from "I'm sorry") scores highest.

Choices (recorded): ``ablation`` -- ``query_scale`` (default, the paper's: query times ``eps``,
near-uniform attention), ``mean_mask`` (the reference code's other mask: the head's query :=
the mean query of its layer), ``mean_z`` (headscope's: z = its mean over the harmless prompts'
real positions) or ``zero``; ``eps`` (default 1e-4, the reference code's ``scale_factor`` in
``lib/SHIPS/get_ships.py``'s ``mask_config``; with 1e-2 the attention is visibly non-uniform
when the logits are large and KL is understated); ``kl_eps`` (default 1e-12, added to both
probability vectors before the KL as in ``lib/SHIPS/pd_diff.py::kl_divergence``); last real
token of right-padded batches; natural-log KL. Query scaling acts after QK-norm where a model
has one (:func:`headscope.models.arch.query_scale_act`). The reference scores each request
without a chat template (``get_ships.py``, ``main``); headscope's ``safety`` task applies the
model's chat template when it has one (task option ``chat=false`` to match).

Computation: single-head ablations are edits on the patching engine
(:mod:`headscope.patching.engine`): one forward per layer serves all of that layer's heads (one
batch slice each), starts from the cached residual entering the layer, runs each length group
of prompts only up to its last token, and unembeds only that token. Query scaling is the edit
``q_h := eps * q_h`` (the residual entering the head's layer is the unablated one, so its
unablated q is the cached one); the result equals ablating through
:mod:`headscope.interventions` one head per forward (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.models.arch import query_scale_act
from headscope.patching.engine import Edit, PatchEngine
from headscope.patching.heads import head_masks
from headscope.results import HeadScores, build_provenance
from headscope.safety.ablation import PAPER_EPS, check_ablation, masked_mean_z
from headscope.scale.spec import by_head
from headscope.tasks.protocols import SafetyTask

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


def kl_div(base_logp: torch.Tensor, new_logp: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """KL(p_base || p_new) per row from log-probabilities (batch, d_vocab) -> (batch,).

    ``eps`` > 0 adds ``eps`` to both probability vectors first (the reference code's smoothing).
    """
    if eps:
        p, q = base_logp.exp() + eps, new_logp.exp() + eps
        return (p * (p.log() - q.log())).sum(-1)
    return (base_logp.exp() * (base_logp - new_logp)).sum(-1)


def ablation_means(model: Any, task: Any, ablation: str, heads: list[Head], batch_size: int | None) -> dict[int, torch.Tensor] | None:
    """Mean z over the harmless prompts (only for ``mean_z`` ablation)."""
    if ablation != "mean_z":
        return None
    tokens, last = task.padded(model, "harmless")
    return masked_mean_z(model, tokens, last, [layer for layer, _ in heads], batch_size)


def ablation_edit(ablation: str, layer: int, mask: torch.Tensor, eps: float, base_q: torch.Tensor | None,
                  means: dict[int, torch.Tensor] | None, q_act: str | None = None) -> Edit:
    """The engine edit that ablates the heads in ``mask`` (k, n, pos, n_heads) at ``layer``.

    ``q_act`` is where query scaling acts (:func:`headscope.models.arch.query_scale_act`) and
    ``base_q`` that activation from the unablated run.
    """
    if ablation == "query_scale":
        assert base_q is not None and q_act is not None
        return Edit(q_act, layer, mask, (eps * base_q).unsqueeze(0))  # base_q: (n, pos, heads, d_head)
    if ablation == "mean_mask":
        assert base_q is not None and q_act is not None
        return Edit(q_act, layer, mask, base_q.mean(2, keepdim=True).unsqueeze(0))
    if ablation == "zero":
        return Edit("z", layer, mask, torch.zeros(1, 1, 1, 1, 1))
    assert means is not None
    return Edit("z", layer, mask, means[layer].reshape(1, 1, 1, *means[layer].shape))


def single_head_kls(
    model: Any,
    tokens: torch.Tensor,
    last: torch.Tensor,
    heads: list[Head],
    ablation: str = "query_scale",
    eps: float = PAPER_EPS,
    means: dict[int, torch.Tensor] | None = None,
    max_rows: int | None = None,
    progress: bool = False,
    kl_eps: float = 1e-12,
) -> tuple[torch.Tensor, dict[Head, torch.Tensor]]:
    """KL(p_base || p_ablated) at each row's ``last`` position, one head ablated at a time.

    Args:
        tokens: (n, pos) right-padded prompts; ``last``: (n,) their last real positions.
        heads: heads to ablate (one per slice); ``means``: layer -> (n_heads, d_head) for ``mean``.

    Returns:
        ``(base log-probs (n, d_vocab), {head: (n,) KL})``.
    """
    layers = sorted({layer for layer, _ in heads})
    state: dict[str, torch.Tensor] = {}

    def metric(logits: torch.Tensor) -> torch.Tensor:  # (k * n, d_vocab) -> (k * n,)
        k = logits.shape[0] // state["base"].shape[0]
        return kl_div(state["base"].repeat(k, 1), logits.float().log_softmax(-1), kl_eps)

    engine = PatchEngine(model, last, metric, max_rows=max_rows, progress=progress)
    q_act = query_scale_act(model) if ablation in ("query_scale", "mean_mask") else None
    acts = (q_act,) if q_act is not None else ()
    cache = engine.cache_run(tokens, acts=acts, layers=layers)
    assert cache.end_logits is not None
    state["base"] = cache.end_logits.float().log_softmax(-1)
    n, pos = tokens.shape
    out: dict[Head, torch.Tensor] = {}
    jobs = [(layer, chunk) for layer in layers
            for chunk in engine.chunks([h for lay, h in heads if lay == layer], int(pos), "heads")]
    for layer, chunk in engine.progress_iter(jobs, "ships"):
        mask = head_masks("z", [(h, None) for h in chunk], n, pos, model.n_heads)  # (k, n, pos, heads)
        base_q = cache.acts.get((q_act, layer)) if q_act is not None else None
        edit = ablation_edit(ablation, layer, mask, eps, base_q, means, q_act)
        vals, _ = engine.run_edits(layer, cache.resid_pre[layer], [edit], k=len(chunk))
        assert vals is not None
        for i, h in enumerate(chunk):
            out[(layer, h)] = vals[i].float().cpu()
    return state["base"].cpu(), out


@register_analyzer(
    "ships",
    summary="Ships (Zhou et al. 2024): KL of the last-token distribution when one head is ablated (query scaling)",
    requires=SafetyTask,
    presets={"paper": {"ablation": "query_scale", "eps": PAPER_EPS, "kl_eps": 1e-12}},
    shard=by_head(lambda model, task, o: select_heads(model, o.get("heads"), o.get("layers")), clears=("layers",)),
)
def ships(
    model: Any,
    task: Any,
    ablation: str = "query_scale",
    eps: float = PAPER_EPS,
    kl_eps: float = 1e-12,
    heads: str | None = None,
    layers: str | None = None,
    batch_size: int | None = 16,
    progress: bool = False,
) -> HeadScores:
    """Ships score of every (selected) head on the harmful requests.

    Args:
        ablation: ``query_scale`` (default), ``mean_mask``, ``mean_z`` or ``zero``.
        eps: query scale for ``query_scale`` (default 1e-4, the reference code's).
        kl_eps: probability smoothing in the KL (default 1e-12, the reference code's).
        heads: only these heads ("L.H,..."); others get NaN.
        layers: only the heads of these layers ("A-B" or "A,B").
        batch_size: prompts per forward pass of the mean-z reference run (the sweep itself is
            chunked by the patching engine's memory budget).
        progress: progress bar over heads.

    Returns:
        HeadScores with metric ``ships_kl`` (mean KL, nats) and ``stderr``, ``n``.
    """
    check_ablation(ablation)
    chosen = select_heads(model, heads, layers)
    tokens, last = task.padded(model, "harmful")
    means = ablation_means(model, task, ablation, chosen, batch_size)
    base, kls = single_head_kls(model, tokens, last, chosen, ablation, eps, means, progress=progress, kl_eps=kl_eps)
    shape = (model.n_layers, model.n_heads)
    score, err = np.full(shape, np.nan), np.full(shape, np.nan)
    for head, kl in kls.items():
        score[head] = float(kl.mean())
        err[head] = float(kl.std() / np.sqrt(len(kl))) if len(kl) > 1 else 0.0
    refuse_top = [model.tokenizer.decode([int(i)]) for i in base.argmax(-1)]
    prov = build_provenance(
        model, task=task.describe(), analyzer="ships",
        options={"ablation": ablation, "eps": eps, "kl_eps": kl_eps, "heads": heads, "layers": layers, "batch_size": batch_size},
        choices={
            "ablation": ablation, "eps": eps if ablation == "query_scale" else None,
            "query_site": query_scale_act(model) if ablation in ("query_scale", "mean_mask") else None,
            "mean_reference": "harmless prompts, real positions" if ablation == "mean_z" else None,
            "kl_eps": kl_eps,
            "distribution": "next token at the last real token of each harmful prompt (chat template applied)" if task.uses_chat(model) else "next token at the last token",
            "kl": "KL(p_base || p_ablated), natural log, mean over prompts",
            "base_top_tokens": refuse_top,
        },
    )
    common = {"model": model.spec, "task": task.name, "analyzer": "ships"}
    kv = model.kv_head_matrix()
    return HeadScores.from_matrix(score, metric="ships_kl", extra={"stderr": err, "n": int(tokens.shape[0]), "kv_head": kv}, provenance=prov, **common)
