"""Test and docs tooling: open headscope HTML in headless Chromium through Playwright.

Not part of the library. Used by ``tests/test_report_browser.py`` and ``docs/screenshots.py``::

    python tests/browser_harness.py PAGE.html OUT.png [WIDTH HEIGHT]

Playwright's Python API drives the *system* Chromium (``executable_path``); its own browser
download is not needed. :func:`ensure_chromium` finds Chromium on PATH and, where it is missing
and we run as root with ``apt-get`` (a fresh CI machine), installs Debian's ``chromium``
package, as the browser test always has. Page errors are collected from Playwright's
``pageerror`` and ``console`` (type ``error``) events.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(timeout: float = 900) -> tuple[str | None, str]:
    """Find Chromium, installing Debian's ``chromium`` package when missing and running as root.

    Returns:
        ``(path, "")`` when available, else ``(None, reason)``.
    """
    path = find_chromium()
    if path:
        return path, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and installing it needs root (apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(cmd)}` failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return None, f"`{' '.join(cmd)}` exited {done.returncode}: {tail[0]}"
    path = find_chromium()
    return (path, "") if path else (None, "apt-get installed chromium but no chromium binary is on PATH")


@dataclass
class PageErrors:
    """What went wrong in the page: uncaught exceptions and ``console.error`` messages."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.page_errors, *self.console_errors]


@contextlib.contextmanager
def open_page(page: str | Path, chromium: str, size: tuple[int, int] = (1280, 900),
              settle_ms: int = 15000) -> Iterator[tuple[Any, PageErrors]]:
    """Open a local HTML file in headless Chromium; yield ``(playwright page, errors)``.

    Waits for the load event and then (up to ``settle_ms``) for every plotly div to draw its SVG.
    """
    from playwright.sync_api import sync_playwright

    errors = PageErrors()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            tab = browser.new_page(viewport={"width": size[0], "height": size[1]})
            tab.on("pageerror", lambda exc: errors.page_errors.append(str(exc)))
            tab.on("console", lambda msg: errors.console_errors.append(msg.text) if msg.type == "error" else None)
            tab.goto(Path(page).resolve().as_uri(), wait_until="load")
            with contextlib.suppress(Exception):  # a page whose plots never draw is reported by count_plots
                tab.wait_for_function(
                    "() => Array.from(document.querySelectorAll('.plotly-graph-div'))"
                    ".every(d => d.querySelector('.main-svg'))", timeout=settle_ms)
            yield tab, errors
        finally:
            browser.close()


def count_plots(tab: Any) -> tuple[int, int]:
    """``(plotly divs that drew their SVG, plotly divs)`` in the page."""
    return tuple(tab.evaluate(
        "() => { const d = Array.from(document.querySelectorAll('.plotly-graph-div'));"
        " return [d.filter(x => x.querySelector('.main-svg')).length, d.length]; }"))


def cell_position(tab: Any, div_index: int, trace_index: int, layer: int, head: int) -> tuple[float, float]:
    """Page coordinates of the centre of heatmap cell (head on x, layer on y) of one trace,
    from plotly's own axis mapping (``l2p``) of the trace's subplot."""
    return tuple(tab.evaluate(
        """([i, t, layer, head]) => {
            const gd = document.querySelectorAll('.plotly-graph-div')[i];
            const trace = gd._fullData[t];
            const xa = gd._fullLayout[trace.xaxis.replace('x', 'xaxis')];
            const ya = gd._fullLayout[trace.yaxis.replace('y', 'yaxis')];
            const box = gd.getBoundingClientRect();
            return [box.left + window.scrollX + xa._offset + xa.l2p(head),
                    box.top + window.scrollY + ya._offset + ya.l2p(layer)];
        }""", [div_index, trace_index, layer, head]))


def hover_text(tab: Any, div_index: int, trace_index: int, layer: int, head: int) -> str:
    """Move the mouse over a heatmap cell and return the tooltip's text ("" when none shows)."""
    x, y = cell_position(tab, div_index, trace_index, layer, head)
    tab.evaluate("([x, y]) => window.scrollTo(0, Math.max(0, y - 300))", [x, y])
    scroll = tab.evaluate("() => [window.scrollX, window.scrollY]")
    tab.mouse.move(x - scroll[0] - 3, y - scroll[1] - 3)
    tab.mouse.move(x - scroll[0], y - scroll[1], steps=4)
    label = tab.locator(".plotly-graph-div").nth(div_index).locator(".hoverlayer .hovertext")
    try:
        label.first.wait_for(state="attached", timeout=5000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: no tooltip
        return ""
    # SVG text: one <tspan class="line"> per tooltip line
    return "\n".join(label.evaluate_all(
        "els => els.map(e => Array.from(e.querySelectorAll('tspan.line')).map(t => t.textContent).join('\\n')"
        " || e.textContent)"))


@dataclass
class RenderResult:
    """What a page did in the browser."""

    plots: int = 0
    plot_divs: int = 0
    errors: list[str] = field(default_factory=list)


def render(page: str | Path, chromium: str, screenshot: str | Path | None = None,
           size: tuple[int, int] = (1280, 900)) -> RenderResult:
    """Load ``page``; count drawn plotly figures, collect page errors, optionally screenshot the
    top ``size`` of the page to a PNG."""
    with open_page(page, chromium, size) as (tab, errors):
        drawn, divs = count_plots(tab)
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshot))
        return RenderResult(plots=drawn, plot_divs=divs, errors=errors.all)


def read_png(path: str | Path) -> tuple[int, int, int, bytes]:
    """Decode an 8-bit RGB/RGBA (non-interlaced) PNG with zlib only.

    Returns:
        ``(width, height, channels, pixels)`` with ``pixels`` the unfiltered rows, row-major.
    """
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def png_stats(path: str | Path, step: int = 3) -> dict[str, float]:
    """Blankness statistics of a PNG: distinct colours and the fraction of pixels that differ
    from the most common (background) colour, on a ``step``-strided grid of pixels."""
    width, height, channels, px = read_png(path)
    counts: dict[bytes, int] = {}
    for y in range(0, height, step):
        row = y * width * channels
        for x in range(0, width, step):
            key = px[row + x * channels: row + x * channels + 3]
            counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    return {"width": width, "height": height, "colours": len(counts),
            "non_background": 1 - max(counts.values()) / total if total else 0.0}


def is_blank(path: str | Path, min_colours: int = 16, min_fraction: float = 0.02) -> bool:
    """True when the image is (nearly) one colour."""
    stats = png_stats(path)
    return stats["colours"] < min_colours or stats["non_background"] < min_fraction


def main(argv: list[str] | None = None) -> int:
    """``python tests/browser_harness.py PAGE.html OUT.png [WIDTH HEIGHT]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 4):
        print("usage: python tests/browser_harness.py PAGE.html OUT.png [WIDTH HEIGHT]", file=sys.stderr)
        return 2
    chromium, reason = ensure_chromium()
    if chromium is None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    size = (int(args[2]), int(args[3])) if len(args) == 4 else (1280, 900)
    result = render(args[0], chromium, screenshot=args[1], size=size)
    print(json.dumps({"plots": result.plots, "plot_divs": result.plot_divs, "errors": result.errors,
                      **png_stats(args[1])}))
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
