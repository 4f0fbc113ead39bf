"""Direct logit attribution (DLA) per head (Elhage et al. 2021; Wang et al. 2022, Fig. 3).

A head's direct effect on the metric is what it writes into the residual at END (its output
``z_h[END] @ W_O[h]``, through the post-attention norm on Gemma-2/3 and OLMo-2; see
:mod:`headscope.trace.components`), passed through the final normalisation *with the scale
frozen* and read by the unembedding along the logit-difference direction
``W_U[:, answer] - W_U[:, wrong]``::

    dla[l, h] = (centre(write_h) / scale_END) * w_final . (W_U[:, answer] - W_U[:, wrong])

LayerNorm-scale convention (the usual one, as TransformerLens ``cache.apply_ln_to_stack``):
``scale_END`` is the final norm's scale of the *whole* clean residual at END,
``sqrt(mean(centre(x)^2) + eps)`` (``centre`` subtracts the mean for LayerNorm only);
``w_final`` is the final norm's real elementwise weight (``1 + weight`` on Gemma;
:mod:`headscope.models.norms`). Every component of the residual (embeddings, heads, ``b_O``,
MLPs) is attributed the same way, so the components plus the final norm's bias and ``b_U``
sum exactly to the logit difference.

Soft-capping (Gemma-2): the model's logits are ``c * tanh(raw / c)``, not linear in the
residual. DLA is reported in *raw* (pre-soft-cap) logit units: the components sum to the raw
logit difference; the capped difference the model outputs is recorded beside it. Runs on the
clean prompts; scores are in logit units, averaged over prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.models.arch import final_logit_softcap
from headscope.models.norms import final_norm
from headscope.results import HeadScores, build_provenance
from headscope.tasks.contrastive import contrastive_batch
from headscope.tasks.protocols import ContrastiveTask
from headscope.trace.components import residual_split


def direct_logit_attribution_values(model: Any, batch: Any) -> dict[str, torch.Tensor]:
    """Per-row DLA of every head and of every other component of the END residual.

    Returns:
        ``dla`` (n_layers, n_heads, n) per head; ``embed`` (n,), ``attn_bias`` (n_layers, n),
        ``mlp`` (n_layers, n) and ``constant`` (n,) (final-norm bias and ``b_U``) for the other
        components; ``resid_dla`` (n,) the formula applied to the whole final residual;
        ``raw_logit_diff`` (n,) the logit difference before soft-capping, computed from the
        final residual (equals the sum of all components); ``logit_diff`` (n,) the model's own
        (soft-capped where the model caps).
    """
    split = residual_split(model, batch.clean, batch.end)
    spec = final_norm(model)
    w_u = model.bridge.W_U.detach().float().cpu()  # (d_model, d_vocab)
    direction = (w_u[:, batch.answer] - w_u[:, batch.wrong]).T  # (n, d_model)
    scale = spec.scale(split.final).cpu()  # (n, 1)

    def attribute(parts: torch.Tensor) -> torch.Tensor:  # (n, ..., d_model) -> (n, ...)
        shape = (parts.shape[0],) + (1,) * (parts.dim() - 2) + (parts.shape[-1],)
        normed = spec.linear(parts).cpu() / scale.view(parts.shape[0], *([1] * (parts.dim() - 1)))
        return (normed * direction.view(shape)).sum(-1)

    b_u = getattr(model.bridge, "b_U", None)
    constant = torch.zeros(batch.n)
    if spec.bias is not None:
        constant = constant + direction @ spec.bias.cpu()
    if b_u is not None:
        b = b_u.detach().float().cpu()
        constant = constant + b[batch.answer] - b[batch.wrong]
    raw = final_norm(model).apply(split.final).cpu() @ w_u
    if b_u is not None:
        raw = raw + b_u.detach().float().cpu()
    rows = torch.arange(batch.n)
    cap = final_logit_softcap(model)
    capped = raw if cap is None else cap * torch.tanh(raw / cap)
    return {
        "dla": attribute(split.heads).permute(1, 2, 0),
        "embed": attribute(split.embed),
        "attn_bias": attribute(split.attn_bias).T,
        "mlp": attribute(split.mlp).T,
        "constant": constant,
        "resid_dla": attribute(split.final),
        "raw_logit_diff": raw[rows, batch.answer] - raw[rows, batch.wrong],
        "logit_diff": capped[rows, batch.answer] - capped[rows, batch.wrong],
    }


@register_analyzer(
    "direct_logit_attribution",
    summary="direct logit attribution of every head to the task's logit difference (frozen final-LN scale)",
    requires=ContrastiveTask,
)
def direct_logit_attribution(model: Any, task: Any) -> HeadScores:
    """Direct effect of each head's END output on ``logit[answer] - logit[wrong]`` (clean run)."""
    batch = contrastive_batch(model, task)
    out = direct_logit_attribution_values(model, batch)
    dla = out["dla"]
    n = batch.n
    stderr = (dla.std(-1, unbiased=True) / np.sqrt(n)).numpy() if n > 1 else 0.0
    info = task.describe()
    cap = final_logit_softcap(model)
    provenance = build_provenance(
        model, task=info, analyzer="direct_logit_attribution", options={},
        choices={
            "ln_scale": "final-norm scale of the whole clean residual at END, frozen (TransformerLens apply_ln_to_stack)",
            "final_norm": final_norm(model).form,
            "centering": "components mean-centred for LayerNorm models, not for RMSNorm",
            "post_attention_norm": "linearised with its scale frozen at the clean run's value (Gemma-2/3, OLMo-2)",
            "logit_units": "raw logits before final soft-capping" if cap else "logits",
            "final_logit_softcap": cap,
            "unattributed": "final-norm bias, b_O, embeddings and MLPs (not heads)",
            "position": "END only",
            "clean_metric": float(out["logit_diff"].mean()),
            "clean_raw_logit_diff": float(out["raw_logit_diff"].mean()),
            "sum_over_heads": float(dla.sum((0, 1)).mean()),
        },
        seed=info.get("seed"),
    )
    kv = model.kv_head_matrix()
    return HeadScores.from_matrix(
        dla.mean(-1).numpy(), model=model.spec, task=task.name, analyzer="direct_logit_attribution",
        metric="dla", extra={"stderr": stderr, "n": n, "kv_head": kv}, provenance=provenance,
    )
