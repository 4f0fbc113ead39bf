"""Where headscope keeps derived files (dequantized GGUF weights, joined GGUF parts).

The root is ``$HEADSCOPE_CACHE`` if set, else ``~/.cache/headscope``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """Return the cache directory, creating it if needed."""
    root = Path(os.environ.get("HEADSCOPE_CACHE", Path.home() / ".cache" / "headscope"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes.

    The digest is memoised next to the cache, keyed by (path, size, mtime), so a 100 MB GGUF
    is hashed once rather than at every load.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_root() / "sha256" / key
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(".tmp")
    tmp.write_text(digest.hexdigest())
    os.replace(tmp, memo)
    return digest.hexdigest()
