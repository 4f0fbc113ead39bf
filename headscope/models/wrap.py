"""Bring your own model: wrap an in-memory Hugging Face model or a booted TransformerBridge.

:func:`from_hf` boots TransformerLens's ``TransformerBridge`` on a causal LM object you already
have (``TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)``, which forces
eager attention so pattern hooks fire), exactly as :func:`headscope.load_model` does after
reading a directory; :func:`from_bridge` wraps a bridge you booted yourself. Both check the
architecture facts against the family file (:mod:`headscope.models.facts`) as loading does.
The weights hash in provenance is the sha256 of the state dict (no files exist to hash).
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.models.facts import arch_facts
from headscope.models.load import boot_bridge, resolve_device, resolve_dtype, state_dict_hash
from headscope.models.model import Model

__all__ = ["from_bridge", "from_hf", "not_a_model_message"]


def not_a_model_message(obj: Any) -> str | None:
    """The one-line fix when ``obj`` is a model object that is not a headscope :class:`Model`."""
    if type(obj).__name__ == "TransformerBridge" or hasattr(obj, "original_model"):
        return f"got a {type(obj).__name__}: wrap it first with hs.from_bridge(bridge)."
    if isinstance(obj, torch.nn.Module):
        return f"got a {type(obj).__name__} object: wrap it first with hs.from_hf(model, tokenizer)."
    return None


def _spec(hf_model: Any, name: str | None) -> str:
    """The spec recorded in provenance: ``name``, else ``config.name_or_path``, else the class."""
    return name or str(getattr(hf_model.config, "name_or_path", "") or type(hf_model).__name__)


def from_hf(hf_model: Any, tokenizer: Any, name: str | None = None, device: str | torch.device | None = None,
            dtype: str | torch.dtype | None = None) -> Model:
    """A :class:`Model` from a Hugging Face causal LM object and its tokenizer.

    Args:
        hf_model: e.g. ``AutoModelForCausalLM.from_pretrained(...)``; it is put in eval mode
            and its attention switched to eager by the bridge.
        tokenizer: its tokenizer.
        name: the spec recorded in provenance (default: ``config.name_or_path`` or the class).
        device, dtype: move the model there (default: where it already is, as it is).

    Raises:
        HeadscopeError: ``hf_model`` is not a torch module with a config, or no tokenizer.
    """
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise HeadscopeError(f"from_hf needs a Hugging Face model object (a torch module with a config); got {type(hf_model).__name__}.")
    if tokenizer is None or not callable(tokenizer):
        raise HeadscopeError("from_hf needs the model's tokenizer: hs.from_hf(model, AutoTokenizer.from_pretrained(...)).")
    param = next(hf_model.parameters())
    dev = resolve_device(device) if device is not None else str(param.device)
    typ = resolve_dtype(dtype) if dtype is not None else param.dtype
    spec = _spec(hf_model, name)
    bridge = boot_bridge(spec, hf_model, tokenizer, dev, typ)
    model = Model(bridge, bridge.tokenizer, spec, "object", state_dict_hash(hf_model), dev, typ)
    arch_facts(model)
    return model


def from_bridge(bridge: Any, name: str | None = None) -> Model:
    """A :class:`Model` from a ``TransformerBridge`` you booted (``boot_transformers``).

    It is put in eval mode and given headscope's KV-cache keyword shim
    (:mod:`headscope.models.compat`).

    Raises:
        HeadscopeError: ``bridge`` is not a TransformerBridge with a tokenizer.
    """
    from headscope.models.compat import install_cache_kwarg_shim

    hf_model = getattr(bridge, "original_model", None)
    if hf_model is None or getattr(bridge, "tokenizer", None) is None:
        raise HeadscopeError(f"from_bridge needs a TransformerBridge with a tokenizer; got {type(bridge).__name__}.")
    bridge.eval()
    install_cache_kwarg_shim(bridge)
    param = next(hf_model.parameters())
    model = Model(bridge, bridge.tokenizer, _spec(hf_model, name), "bridge", state_dict_hash(hf_model), str(param.device), param.dtype)
    arch_facts(model)
    return model
