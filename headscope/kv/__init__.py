"""KV-cache policies from head scores: which heads keep a full cache (RazorAttention and its kin)."""

from headscope.kv.policy import export_kv_policy, parse_fractions

__all__ = ["export_kv_policy", "parse_fractions"]
