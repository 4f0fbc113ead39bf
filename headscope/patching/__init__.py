"""Patching: the batched, prefix-reusing engine and exact/attribution/path patching on it."""

from headscope.patching.engine import Edit, PatchEngine, RunCache
from headscope.patching.heads import HeadPatchResult, patch_all_heads
from headscope.patching.paths import Receivers, parse_receivers, path_patch

__all__ = ["Edit", "HeadPatchResult", "PatchEngine", "Receivers", "RunCache", "parse_receivers", "patch_all_heads", "path_patch"]
