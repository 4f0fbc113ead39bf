"""Progress bars for anything that takes more than a few seconds (tqdm; quiet when disabled)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars are on unless ``HEADSCOPE_PROGRESS=0``."""
    return os.environ.get("HEADSCOPE_PROGRESS", "1") not in {"0", "false", "no"}


def progress_bar(items: Iterable[T], label: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr when enabled."""
    if not (enabled and progress_enabled()):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=label, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
