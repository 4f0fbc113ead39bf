"""Per-head activation tracing.

>>> tr = trace(model, tokens, acts=["pattern", "z"], layers=[0, 1])
>>> tr.get("pattern", 1).shape        # (batch, n_heads, q_pos, k_pos)

Reducers run inside the hook, so a scorer never holds O(n^2) patterns for all layers:

>>> tr = trace(model, tokens, reducers=[offset_mass(1)])
>>> tr.reduced("offset_mass_1").shape  # (batch, n_layers, n_heads)
"""

from headscope.trace.names import ACTIVATIONS, hook_name
from headscope.trace.reducers import (
    ReduceContext,
    Reducer,
    last_query_argmax,
    last_query_row,
    mask_mass,
    offset_mass,
)
from headscope.trace.tracer import Trace, TracerError, trace

__all__ = [
    "ACTIVATIONS",
    "ReduceContext",
    "Reducer",
    "Trace",
    "TracerError",
    "hook_name",
    "last_query_argmax",
    "last_query_row",
    "mask_mass",
    "offset_mass",
    "trace",
]
