"""Training-free per-head logit lens: a head's output through the final norm onto the vocabulary.

For head ``(L, h)`` at position ``p`` the head's write into the residual is
``r = z[p, h] @ W_O^h`` (d_model, without ``b_O``; the tracer's ``result``), passed through the
post-attention norm on models that have one (Gemma-2/3, OLMo-2; see
:mod:`headscope.trace.components`). The lens logits are (nostalgebraist 2020's logit lens
applied per head, as in the "direct logit attribution" view of Elhage et al. 2021)::

    logits = (norm(r) * w_final) @ W_U          (d_vocab,)

where ``w_final`` is the final norm's real elementwise weight (``1 + weight`` on Gemma;
:mod:`headscope.models.norms`).

with one of two final-norm conventions (``LN_MODES``), recorded in every result:

- ``"residual"`` (default): divide by the final-norm scale of the *model's residual* at that
  position, i.e. the head's exact linear share of the final logits
  (LayerNorm: the head vector is centred first, as the norm centres the sum);
- ``"recompute"``: normalise the head vector on its own, ``r / rms(r)`` (LayerNorm: centred and
  divided by its own std), as if the head's output were the whole residual.

The final norm's bias and the unembedding bias are excluded (they add the same vector for every
head). Shapes: ``head_vectors`` returns (batch, n_pos, n_sel_heads, d_model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.errors import HeadscopeError, suggest
from headscope.models.arch import final_logit_softcap
from headscope.models.norms import final_norm

LN_MODES: tuple[str, ...] = ("residual", "recompute")
Head = tuple[int, int]


def check_ln_mode(ln: str) -> None:
    """Raise a one-line error for an unknown LayerNorm convention."""
    if ln not in LN_MODES:
        raise HeadscopeError(f"unknown ln convention '{ln}'.{suggest(ln, LN_MODES)} Choose from {', '.join(LN_MODES)}.")


def unembed(model: Any) -> torch.Tensor:
    """``W_U`` with the final norm's effective weight folded in: (d_model, d_vocab), float32, CPU.

    The weight is the norm's real one (:func:`headscope.models.norms.final_norm`: ``1 + w`` on
    Gemma).
    """
    w_u = model.bridge.W_U.detach().float().cpu()
    return final_norm(model).weight.cpu().unsqueeze(1) * w_u


def unembed_bias(model: Any) -> torch.Tensor:
    """The unembedding bias with the final norm's bias folded in: (d_vocab,), float32, CPU.

    ``b_U + b_final @ W_U`` (zeros where the model has neither), the ``b_U`` of a TransformerLens
    ``HookedTransformer`` loaded with ``fold_ln=True`` (the Attention Lens reference initialises
    its lens biases from it).
    """
    w_u = model.bridge.W_U.detach().float().cpu()
    b_u = getattr(model.bridge, "b_U", None)
    out = torch.zeros(w_u.shape[1]) if b_u is None else b_u.detach().float().cpu().clone()
    bias = final_norm(model).bias
    return out if bias is None else out + bias.float().cpu() @ w_u


def normalise(model: Any, vec: torch.Tensor, ln: str, resid_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the final norm's non-learned part to head vectors ``vec`` (..., d_model).

    ``resid_scale`` (..., 1) is the residual's final-norm scale, needed for ``ln="residual"``.
    """
    check_ln_mode(ln)
    spec = final_norm(model)
    v = spec.centre(vec.float())
    if ln == "residual":
        if resid_scale is None:
            raise HeadscopeError("ln='residual' needs the residual's final-norm scale.")
        return v / resid_scale
    return v / spec.scale(vec)


def head_vectors(
    model: Any,
    tokens: torch.Tensor,
    heads: Sequence[Head],
    positions: torch.Tensor | None = None,
    batch_size: int | None = None,
    interventions: Sequence[Any] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the heads write into the residual, and the residual's final-norm scale.

    A head's write is ``z_h @ W_O^h``, passed through the post-attention norm (linearised, its
    scale frozen) on models that have one (Gemma-2/3, OLMo-2); see
    :mod:`headscope.trace.components`.

    Args:
        tokens: (batch, pos).
        heads: the heads, in output order.
        positions: (n_pos,) positions to keep (default all).

    Returns:
        ``(vectors (batch, n_pos, n_heads, d_model), scale (batch, n_pos, 1))``, float32, CPU.
    """
    from headscope.trace.components import head_writes

    for layer, head in heads:
        model.check_head(layer, head)
    return head_writes(model, tokens, heads, positions, interventions, batch_size)


def lens_logits(model: Any, vectors: torch.Tensor, scale: torch.Tensor, ln: str = "residual") -> torch.Tensor:
    """Training-free lens logits of head vectors: (..., d_model) -> (..., d_vocab)."""
    with torch.inference_mode():
        return normalise(model, vectors, ln, scale.unsqueeze(-2) if scale.ndim == vectors.ndim - 1 else scale) @ unembed(model)


def final_logits(model: Any, normalized: torch.Tensor) -> torch.Tensor:
    """Model logits from ``ln_final.hook_normalized`` (..., d_model): the final norm's effective
    weight and bias, ``W_U``, ``b_U`` and, on Gemma-2, the final-logit soft-capping.

    Lets callers that need logits at a few positions skip the full-sequence unembedding.
    """
    spec = final_norm(model)
    x = normalized.float().cpu() * spec.weight.cpu()
    if spec.bias is not None:
        x = x + spec.bias.cpu()
    out = x @ model.bridge.W_U.detach().float().cpu()
    b_u = getattr(model.bridge, "b_U", None)
    out = out if b_u is None else out + b_u.detach().float().cpu()
    cap = final_logit_softcap(model)
    return out if cap is None else cap * torch.tanh(out / cap)
