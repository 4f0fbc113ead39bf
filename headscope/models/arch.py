"""Architecture facts that decide where an intervention or a linear decomposition is exact.

Read from the Hugging Face config and the bridge's attention components, never guessed from
the model's name. Where headscope cannot be exact on an architecture it raises
:class:`UnsupportedArchitectureError`, one line naming the architecture and the reason.
"""

from __future__ import annotations

from typing import Any

from headscope.errors import HeadscopeError


class UnsupportedArchitectureError(HeadscopeError):
    """This analysis cannot be exact on this architecture (the message says why)."""


def architecture(model: Any) -> str:
    """The HF model class name, e.g. ``Gemma2ForCausalLM``."""
    return type(model.bridge.original_model).__name__


def hf_config(model: Any) -> Any:
    """The Hugging Face config of the wrapped model (its text config for multimodal wrappers)."""
    cfg = model.bridge.original_model.config
    return getattr(cfg, "text_config", None) or cfg


def _attn(model: Any, layer: int) -> Any:
    return model.bridge.blocks[layer].attn


def has_qk_norm(model: Any, layer: int = 0) -> bool:
    """Whether queries pass through a norm (QK-norm: Qwen3, Gemma-3, OLMo-2, ...) after ``hook_q``."""
    return "q_norm" in getattr(_attn(model, layer), "submodules", {})


def query_scale_act(model: Any, layer: int = 0) -> str:
    """The activation whose per-head scaling scales that head's attention logits.

    Scaling the query by ``s`` scales the attention logits ``q . k / sqrt(d)`` by ``s`` only
    if nothing non-linear acts on the query afterwards. ``hook_q`` (the query projection's
    output) fires before QK-norm, which undoes any nonzero scale, so on QK-norm models the
    scale goes on ``rot_q`` (``hook_rot_q``: after the norm and the rotary embedding, the query
    the scores are computed from). Without QK-norm both are equivalent (RoPE is linear) and
    ``q`` is used.

    Returns:
        ``"q"`` or ``"rot_q"`` (names in :data:`headscope.patching.engine.ACT_HOOKS`).

    Raises:
        UnsupportedArchitectureError: a QK-norm model whose bridge exposes no post-norm query.
    """
    if not has_qk_norm(model, layer):
        return "q"
    attn = _attn(model, layer)
    if hasattr(attn, "hook_rot_q") and not bool(getattr(attn.config, "qk_norm_after_rope", False)):
        return "rot_q"
    raise UnsupportedArchitectureError(
        f"{architecture(model)}: queries are normalised after every hook the bridge exposes, so "
        "query scaling (query masking, Ships) cannot reach the attention logits; use a z ablation."
    )


def final_logit_softcap(model: Any) -> float | None:
    """Gemma-2's final-logit soft-capping value ``c`` (logits = c * tanh(raw / c)), else None."""
    cap = getattr(hf_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


def attention_softcap(model: Any) -> float | None:
    """Gemma-2's attention-logit soft-capping value, else None."""
    cap = getattr(hf_config(model), "attn_logit_softcapping", None)
    return float(cap) if cap else None


def embedding_scale(model: Any) -> float:
    """The factor between a token's ``W_E`` row and what it adds to the residual stream.

    1 for most models; ``sqrt(d_model)`` for Gemma (its model forward, or its scaled embedding
    module, multiplies the embeddings). Measured, not assumed: two one-token inputs ``t1, t2``
    at position 0 give residuals ``r1, r2`` entering block 0, and ``r1 - r2 = s (W_E[t1] -
    W_E[t2])`` (any position embedding cancels). Cached on the model.

    Raises:
        UnsupportedArchitectureError: the residual is not a scaled embedding row.
    """
    store = model.__dict__.setdefault("_arch_cache", {})
    if "embedding_scale" in store:
        return store["embedding_scale"]
    import torch

    from headscope.trace.stream import capture_stream

    ids = torch.tensor([[1], [2]])
    resid = capture_stream(model, ids, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"][:, 0]
    w_e = model.bridge.W_E.detach().float().cpu()
    de, dr = w_e[1] - w_e[2], resid[0] - resid[1]
    scale = float(dr @ de / (de @ de))
    tol = 1e-3 if model.dtype == torch.float32 else 3e-2
    if not torch.allclose(dr, scale * de, rtol=tol, atol=tol * float(dr.abs().max())):
        raise UnsupportedArchitectureError(
            f"{architecture(model)}: the residual entering block 0 is not a scaled embedding row, "
            "so effective embeddings cannot be computed from W_E."
        )
    store["embedding_scale"] = scale
    return scale
