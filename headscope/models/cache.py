"""Deprecated location of :mod:`headscope.cache` (kept for this release)."""

from headscope.cache import cache_root, file_sha256

__all__ = ["cache_root", "file_sha256"]
