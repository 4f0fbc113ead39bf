"""Direct logit attribution (DLA) per head (Elhage et al. 2021; Wang et al. 2022, Fig. 3).

A head's direct effect on the metric is its output at END, ``z_h[END] @ W_O[h]`` (d_model),
passed through the final normalisation *with the scale frozen* and read by the unembedding
along the logit-difference direction ``W_U[:, answer] - W_U[:, wrong]``:

    dla[l, h] = (center(result_h) / scale_END) * w_ln . (W_U[:, answer] - W_U[:, wrong])

LayerNorm-scale convention (the usual one, as TransformerLens ``cache.apply_ln_to_stack``):
``scale_END`` is the final norm's scale of the *whole* clean residual at END,
``sqrt(mean(x^2) + eps)`` for RMSNorm or ``sqrt(var(x) + eps)`` for LayerNorm (where each
component is also mean-centred); ``w_ln`` is the final norm's weight; the norm's bias and
``b_O`` are not attributed to heads. Runs on the clean prompts; scores are in logit units,
averaged over prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.activation_patching import CONTRASTIVE_TASKS, task_batch
from headscope.analyzers.registry import register_analyzer
from headscope.patching.engine import PatchEngine
from headscope.results import HeadScores, build_provenance


def final_norm_parts(model: Any) -> tuple[torch.Tensor, float, bool]:
    """(weight (d_model,), eps, is_rms) of the final normalisation."""
    mod = model.bridge.ln_final.original_component
    eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-5)))
    is_rms = not hasattr(mod, "bias") or mod.bias is None
    return mod.weight.detach(), eps, is_rms


def direct_logit_attribution_values(model: Any, batch: Any) -> dict[str, torch.Tensor]:
    """Per-row DLA of every head and the pieces needed to check it.

    Returns:
        ``dla`` (n_layers, n_heads, n); ``resid_dla`` (n,) the same formula applied to the whole
        final residual (equals the model's logit difference up to the unattributed norm bias);
        ``logit_diff`` (n,) from the model's own logits.
    """
    engine = PatchEngine(model, batch.end, batch.logit_diff)
    cache = engine.cache_run(batch.clean, acts=("z",))
    rows = torch.arange(batch.n)
    end = batch.end
    w, eps, is_rms = final_norm_parts(model)
    last = model.n_layers - 1
    # final residual at END = resid_pre[last] + that block's attention and MLP outputs: recompute it
    resid_final = _final_resid(model, batch.clean, end)
    scale = (resid_final.pow(2).mean(-1) if is_rms else resid_final.var(-1, unbiased=False)).add(eps).sqrt()
    w_u = model.bridge.W_U.detach()  # (d_model, d_vocab)
    direction = (w_u[:, batch.answer] - w_u[:, batch.wrong]).T * w  # (n, d_model)
    dla = torch.empty(model.n_layers, model.n_heads, batch.n)
    for layer in range(model.n_layers):
        z = cache.acts[("z", layer)][rows, end]  # (n, head, d_head)
        result = torch.einsum("nhd,hdm->nhm", z, model.bridge.blocks[layer].attn.W_O.detach())
        if not is_rms:
            result = result - result.mean(-1, keepdim=True)
        dla[layer] = torch.einsum("nhm,nm->hn", result / scale[:, None, None], direction)
    centred = resid_final if is_rms else resid_final - resid_final.mean(-1, keepdim=True)
    resid_dla = ((centred / scale[:, None]) * direction).sum(-1)
    del last
    return {"dla": dla, "resid_dla": resid_dla, "logit_diff": batch.logit_diff(cache.end_logits)}


def _final_resid(model: Any, tokens: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(n, d_model) residual entering the final norm at END (read by the trace-free engine hook)."""
    got: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> None:
        got["x"] = x.detach()[torch.arange(x.shape[0]), end.to(x.device)]

    with torch.inference_mode():
        model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[("ln_final.hook_in", keep)])
    return got["x"]


@register_analyzer(
    "direct_logit_attribution",
    summary="direct logit attribution of every head to the task's logit difference (frozen final-LN scale)",
    tasks=CONTRASTIVE_TASKS,
)
def direct_logit_attribution(model: Any, task: Any) -> HeadScores:
    """Direct effect of each head's END output on ``logit[answer] - logit[wrong]`` (clean run)."""
    batch = task_batch(model, task)
    out = direct_logit_attribution_values(model, batch)
    dla = out["dla"]
    n = batch.n
    stderr = (dla.std(-1, unbiased=True) / np.sqrt(n)).numpy() if n > 1 else 0.0
    info = task.describe()
    provenance = build_provenance(
        model, task=info, analyzer="direct_logit_attribution", options={},
        choices={
            "ln_scale": "final-norm scale of the whole clean residual at END, frozen (TransformerLens apply_ln_to_stack)",
            "centering": "components mean-centred for LayerNorm models, not for RMSNorm",
            "unattributed": "final-norm bias, b_O, embeddings and MLPs",
            "position": "END only",
            "clean_metric": float(out["logit_diff"].mean()),
            "sum_over_heads": float(dla.sum((0, 1)).mean()),
        },
        seed=info.get("seed"),
    )
    kv = model.kv_head_matrix()
    return HeadScores.from_matrix(
        dla.mean(-1).numpy(), model=model.spec, task=task.name, analyzer="direct_logit_attribution",
        metric="dla", extra={"stderr": stderr, "n": n, "kv_head": kv}, provenance=provenance,
    )
