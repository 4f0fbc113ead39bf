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
