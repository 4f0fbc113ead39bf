"""Deprecated location of :mod:`headscope.kv.policy` (kept for this release)."""

from headscope.kv.policy import (
    build_kv_policy,
    export_kv_policy,
    group_scores,
    parse_fractions,
    top_groups,
)

__all__ = ["build_kv_policy", "export_kv_policy", "group_scores", "parse_fractions", "top_groups"]
