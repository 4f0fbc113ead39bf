"""Architecture facts that decide where an intervention or a linear decomposition is exact.

Thin accessors over the model's one facts object (:func:`headscope.models.facts.arch_facts`,
read from the Hugging Face config and the bridge's modules and checked against the family file
in :mod:`headscope.models.families`), never guessed from the model's name. Where headscope
cannot be exact on an architecture it raises :class:`UnsupportedArchitectureError`, one line
naming the architecture and the reason.
"""

from __future__ import annotations

from typing import Any

from headscope.models.config import UnsupportedArchitectureError, architecture, hf_config
from headscope.models.facts import arch_facts

__all__ = ["UnsupportedArchitectureError", "architecture", "attention_softcap", "final_logit_softcap",
           "has_qk_norm", "hf_config", "parallel_residual", "query_scale_act"]


def has_qk_norm(model: Any, layer: int = 0) -> bool:
    """Whether queries pass through a norm (QK-norm: Qwen3, Gemma-3, OLMo-2, ...) after ``hook_q``."""
    return arch_facts(model).qk_norm is not None


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
    facts = arch_facts(model)
    if facts.qk_norm is None:
        return "q"
    if hasattr(model.bridge.blocks[layer].attn, "hook_rot_q") and not facts.qk_norm_after_rope:
        return "rot_q"
    raise UnsupportedArchitectureError(
        f"{architecture(model)}: queries are normalised after every hook the bridge exposes, so "
        "query scaling (query masking, Ships) cannot reach the attention logits; use a z ablation."
    )


def final_logit_softcap(model: Any) -> float | None:
    """Gemma-2's final-logit soft-capping value ``c`` (logits = c * tanh(raw / c)), else None."""
    return arch_facts(model).final_logit_softcap


def attention_softcap(model: Any) -> float | None:
    """Gemma-2's attention-logit soft-capping value, else None."""
    return arch_facts(model).attention_softcap


def parallel_residual(model: Any) -> bool:
    """Whether a block's attention and MLP read the same residual (GPT-NeoX; the config's
    ``use_parallel_residual``/``parallel_attn`` or the bridge's ``parallel_attn_mlp``)."""
    return arch_facts(model).parallel_residual
