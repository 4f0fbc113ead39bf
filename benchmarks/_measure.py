"""Shared benchmark helpers: run one side in a fresh process, sampling its peak extra RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``).

    Without this, memory freed by an earlier run stays resident, the next run reuses it without
    growing RSS, and its peak would read as near zero.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak RSS above the level at entry, sampled every millisecond."""

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float, float]:
    """Run ``fn`` ``repeats`` (>= 2) times.

    Returns (last result, best wall seconds, peak extra MB of the first run, smallest peak extra
    MB of the later runs). Freed heap is returned to the OS before every run, so each peak is
    the memory that run needed; the first run also pays one-off costs (allocator arenas, lazy
    initialisation).
    """
    best = float("inf")
    peaks: list[float] = []
    result = None
    for _ in range(max(2, repeats)):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - t0
        best = min(best, elapsed)
        peaks.append(mem.extra_mb)
    return result, best, peaks[0], min(peaks[1:])


def run_side(script: str, side: str, args: list[str]) -> dict[str, Any]:
    """Run ``script --side SIDE ...`` in a fresh interpreter and parse its last JSON line."""
    # Same allocator policy for both sides: large blocks are mmap'd and returned to the OS on
    # free, so resident memory tracks live memory instead of glibc's retained arenas.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_PROGRESS": "0",
           "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, script, "--side", side, *args], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
