"""Deprecated location of :mod:`headscope.lens.ov_circuit` (kept for this release)."""

from headscope.lens.ov_circuit import (
    check_ln,
    effective_embedding,
    final_readout,
    iter_ov_logits,
    ov_logits,
    ov_weights,
    w_v,
)

__all__ = ["check_ln", "effective_embedding", "final_readout", "iter_ov_logits", "ov_logits", "ov_weights", "w_v"]
