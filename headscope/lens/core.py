"""Training-free per-head logit lens: a head's output through the final norm onto the vocabulary.

For head ``(L, h)`` at position ``p`` the head's output is ``r = z[p, h] @ W_O^h`` (d_model,
without ``b_O``; the tracer's ``result``). The lens logits are (nostalgebraist 2020's logit
lens applied per head, as in the "direct logit attribution" view of Elhage et al. 2021)::

    logits = (norm(r) * w_final) @ W_U          (d_vocab,)

with one of two final-norm conventions (``LN_MODES``), recorded in every result:

- ``"residual"`` (default): divide by the final-norm scale of the *model's residual* at that
  position (``ln_final.hook_scale``), i.e. the head's exact linear share of the final logits
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

LN_MODES: tuple[str, ...] = ("residual", "recompute")
Head = tuple[int, int]


def check_ln_mode(ln: str) -> None:
    """Raise a one-line error for an unknown LayerNorm convention."""
    if ln not in LN_MODES:
        raise HeadscopeError(f"unknown ln convention '{ln}'.{suggest(ln, LN_MODES)} Choose from {', '.join(LN_MODES)}.")


def final_norm(model: Any) -> tuple[torch.Tensor | None, bool, float]:
    """(elementwise weight or None, centres (LayerNorm) or not (RMSNorm), eps) of the final norm."""
    inner = getattr(model.bridge.ln_final, "_original_component", model.bridge.ln_final)
    weight = getattr(inner, "weight", None)
    centred = isinstance(inner, torch.nn.LayerNorm) or "layernorm" in type(inner).__name__.lower()
    eps = float(getattr(inner, "eps", None) or getattr(inner, "variance_epsilon", None) or 1e-5)
    return (None if weight is None else weight.detach().float().cpu()), centred, eps


def unembed(model: Any) -> torch.Tensor:
    """``W_U`` with the final norm's weight folded in: (d_model, d_vocab), float32 on CPU."""
    weight, _, _ = final_norm(model)
    w_u = model.bridge.W_U.detach().float().cpu()
    return w_u if weight is None else weight.unsqueeze(1) * w_u


def normalise(model: Any, vec: torch.Tensor, ln: str, resid_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the final norm's non-learned part to head vectors ``vec`` (..., d_model).

    ``resid_scale`` (..., 1) is the residual's final-norm scale, needed for ``ln="residual"``.
    """
    check_ln_mode(ln)
    _, centred, eps = final_norm(model)
    v = vec - vec.mean(-1, keepdim=True) if centred else vec
    if ln == "residual":
        if resid_scale is None:
            raise HeadscopeError("ln='residual' needs the residual's final-norm scale.")
        return v / resid_scale
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)


def head_vectors(
    model: Any,
    tokens: torch.Tensor,
    heads: Sequence[Head],
    positions: torch.Tensor | None = None,
    batch_size: int | None = None,
    interventions: Sequence[Any] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs and the residual's final-norm scale.

    Args:
        tokens: (batch, pos).
        heads: the heads, in output order.
        positions: (n_pos,) positions to keep (default all).

    Returns:
        ``(vectors (batch, n_pos, n_heads, d_model), scale (batch, n_pos, 1))``, float32, CPU.
    """
    from headscope.trace import trace
    from headscope.trace.stream import capture_stream

    for layer, head in heads:
        model.check_head(layer, head)
    layers = sorted({layer for layer, _ in heads})
    tr = trace(model, tokens, acts=["result"], layers=layers, batch_size=batch_size, interventions=interventions)
    pos = slice(None) if positions is None else positions
    vecs = torch.stack([tr.get("result", layer)[:, pos, head] for layer, head in heads], dim=2)
    scale = capture_stream(model, tokens, ["ln_final.hook_scale"], interventions, batch_size)["ln_final.hook_scale"]
    return vecs.float().cpu(), scale[:, pos]


def lens_logits(model: Any, vectors: torch.Tensor, scale: torch.Tensor, ln: str = "residual") -> torch.Tensor:
    """Training-free lens logits of head vectors: (..., d_model) -> (..., d_vocab)."""
    with torch.inference_mode():
        return normalise(model, vectors, ln, scale.unsqueeze(-2) if scale.ndim == vectors.ndim - 1 else scale) @ unembed(model)


def final_logits(model: Any, normalized: torch.Tensor) -> torch.Tensor:
    """Model logits from ``ln_final.hook_normalized`` (..., d_model): weight, bias, ``W_U``, ``b_U``.

    Lets callers that need logits at a few positions skip the full-sequence unembedding.
    """
    inner = getattr(model.bridge.ln_final, "_original_component", model.bridge.ln_final)
    x = normalized.float().cpu()
    weight, bias = getattr(inner, "weight", None), getattr(inner, "bias", None)
    if weight is not None:
        x = x * weight.detach().float().cpu()
    if bias is not None:
        x = x + bias.detach().float().cpu()
    out = x @ model.bridge.W_U.detach().float().cpu()
    b_u = getattr(model.bridge, "b_U", None)
    return out if b_u is None else out + b_u.detach().float().cpu()
