"""What a loaded model is: its Hugging Face class and config, and the refusal for what cannot be exact.

The lowest module of :mod:`headscope.models`: :mod:`headscope.models.norms` and
:mod:`headscope.models.facts` build on it. Where headscope cannot be exact on an architecture
it raises :class:`UnsupportedArchitectureError`, one line naming the architecture and the reason.
"""

from __future__ import annotations

from typing import Any

from headscope.errors import HeadscopeError

__all__ = ["UnsupportedArchitectureError", "architecture", "hf_config"]


class UnsupportedArchitectureError(HeadscopeError):
    """This analysis cannot be exact on this architecture (the message says why)."""


def architecture(model: Any) -> str:
    """The HF model class name, e.g. ``Gemma2ForCausalLM``."""
    return type(model.bridge.original_model).__name__


def hf_config(model: Any) -> Any:
    """The Hugging Face config of the wrapped model (its text config for multimodal wrappers)."""
    cfg = model.bridge.original_model.config
    return getattr(cfg, "text_config", None) or cfg
