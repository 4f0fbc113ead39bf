"""Every check of ``headscope verify``, grouped by capability (the support-matrix columns)."""

from __future__ import annotations

from headscope.verify.checks import (
    ablation,
    activation_patching,
    decoding,
    dla,
    logit_lens,
    ov_circuit,
    path_patching,
    query_mask,
    trace,
)
from headscope.verify.checks.spec import CheckSpec

CAPABILITIES: tuple[str, ...] = (
    "trace", "activation_patching", "path_patching", "ablation", "query_mask", "dla", "logit_lens",
    "ov_circuit", "decoding",
)
"""Capability names, stable: they are the columns of the support matrix."""

ALL_CHECKS: list[CheckSpec] = [
    *trace.CHECKS, *activation_patching.CHECKS, *path_patching.CHECKS, *ablation.CHECKS,
    *query_mask.CHECKS, *dla.CHECKS, *logit_lens.CHECKS, *ov_circuit.CHECKS, *decoding.CHECKS,
]

__all__ = ["ALL_CHECKS", "CAPABILITIES", "CheckSpec"]
