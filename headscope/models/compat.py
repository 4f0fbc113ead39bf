"""Keep TransformerLens 4.3's bridge working across transformers releases.

transformers 5.24 renamed the KV-cache keyword ``past_key_values`` to ``cache`` in every model,
decoder-layer and attention ``forward`` (the old name is a deprecated alias until 5.40, see
``transformers.utils.deprecation.deprecate_kwarg`` on e.g. ``LlamaAttention.forward``). A
decoder layer now calls its attention with ``cache=...``. TransformerLens 4.3 reimplements the
attention forward, and its ``AttentionBridge._update_kv_cache``
(``transformer_lens/model_bridge/generalized_components/attention.py``) looks for the cache
only under ``past_key_values`` or ``layer_past``. Under 5.24 it finds none, so the cached keys
and values are never read or extended: every incremental step attends to its new tokens alone
and decoding silently returns garbage, while a full forward is unaffected.

:func:`install_cache_kwarg_shim` registers a forward pre-hook on each attention bridge that
also passes the cache under the name the bridge reads. With transformers <= 5.23 (which passes
``past_key_values``) the hook does nothing. :func:`cache_kwarg_name` says which name the
installed transformers uses, for provenance.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_BRIDGE_NAMES = ("past_key_values", "layer_past")
SHIM_ATTR = "_headscope_cache_shim"


def cache_kwarg_name() -> str:
    """``"cache"`` if the installed transformers' attention modules take ``cache``, else
    ``"past_key_values"``."""
    from transformers.models.llama.modeling_llama import LlamaAttention

    params = inspect.signature(LlamaAttention.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@contextmanager
def quiet_cache_deprecation() -> Iterator[None]:
    """Silence transformers' FutureWarning about ``past_key_values`` (the bridge still passes it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
        yield


def _copy_cache_kwarg(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    cache = kwargs.get("cache")
    if cache is None or any(kwargs.get(name) is not None for name in _BRIDGE_NAMES):
        return None
    return args, {**kwargs, "past_key_values": cache}


def install_cache_kwarg_shim(bridge: Any) -> int:
    """Make every attention bridge of ``bridge`` see a ``cache=`` keyword as ``past_key_values``.

    Idempotent. Returns the number of attention modules hooked.
    """
    hooked = 0
    for module in bridge.modules():
        if not hasattr(module, "_update_kv_cache") or getattr(module, SHIM_ATTR, False):
            continue
        module.register_forward_pre_hook(_copy_cache_kwarg, with_kwargs=True)
        setattr(module, SHIM_ATTR, True)
        hooked += 1
    return hooked
