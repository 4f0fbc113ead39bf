"""Render headscope HTML in headless Chromium: console errors, plot count and a screenshot.

Used by the browser test and to make the README screenshots (``python -m
headscope.report.browser PAGE.html OUT.png``). Chromium runs with ``--headless --no-sandbox``
and no network, sync or first-run machinery. Errors are captured twice: a script injected at
the top of the page records ``window.onerror``/``console.error`` into a status element read back
with ``--dump-dom``, and Chromium's own stderr log is scanned for uncaught exceptions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio")

PROBE = """<script>(function(){window.__hsErrors=[];
function note(m){window.__hsErrors.push(String(m));}
window.onerror=function(m,s,l,c){note(m+' @'+l+':'+c);};
window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){note(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};
window.addEventListener('load',function(){setTimeout(function(){
var d=document.createElement('div');d.id='hs-status';
d.setAttribute('data-plots',document.querySelectorAll('.js-plotly-plot .main-svg').length>0?
 Array.prototype.filter.call(document.querySelectorAll('.js-plotly-plot'),function(p){return p.querySelector('.main-svg');}).length:0);
d.setAttribute('data-divs',document.querySelectorAll('.plotly-graph-div').length);
d.setAttribute('data-errors',JSON.stringify(window.__hsErrors));document.body.appendChild(d);},300);});})();</script>"""


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
class RenderResult:
    """What the page did in the browser."""

    plots: int = 0
    plot_divs: int = 0
    errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    dom: str = ""


def _run(browser: str, args: list[str], profile: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def render(page: str | Path, browser: str, screenshot: str | Path | None = None,
           size: tuple[int, int] = (1280, 900), budget_ms: int = 15000, timeout: float = 180) -> RenderResult:
    """Load ``page`` (a local HTML file) in headless Chromium.

    Returns the number of rendered plotly figures, the number of plotly divs, errors seen by
    the page (``window.onerror``, ``console.error``, unhandled rejections) and uncaught errors
    in Chromium's log. With ``screenshot``, also writes a PNG of the top ``size`` of the page.
    """
    page = Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    probed = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + PROBE, text, count=1) if "<head" in text else PROBE + text
    with tempfile.TemporaryDirectory(prefix="hs-chromium-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(probed, encoding="utf-8")
        profile = str(Path(tmp) / "profile")
        done = _run(browser, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                              "--dump-dom", copy.as_uri()], profile, timeout)
        result = RenderResult(dom=done.stdout)
        result.log_errors = [line for line in done.stderr.splitlines()
                             if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)]
        status = re.search(r"<div id=\"hs-status\"([^>]*)>", done.stdout)
        if status is None:
            result.errors.append("page did not finish loading (no status element in the DOM); "
                                 f"chromium exit {done.returncode}: {done.stderr.strip()[-300:]}")
        else:
            attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', status.group(1)))
            result.plots = int(attrs.get("data-plots", 0))
            result.plot_divs = int(attrs.get("data-divs", 0))
            result.errors.extend(json.loads(unescape(attrs.get("data-errors", "[]"))))
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            _run(browser, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                           f"--screenshot={shot}", page.as_uri()], profile, timeout)
    return result


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
    """``python -m headscope.report.browser PAGE.html OUT.png [WIDTH HEIGHT]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 4):
        print("usage: python -m headscope.report.browser PAGE.html OUT.png [WIDTH HEIGHT]", file=sys.stderr)
        return 2
    browser, reason = ensure_chromium()
    if browser is None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    size = (int(args[2]), int(args[3])) if len(args) == 4 else (1280, 900)
    result = render(args[0], browser, screenshot=args[1], size=size)
    print(json.dumps({"plots": result.plots, "plot_divs": result.plot_divs, "errors": result.errors,
                      "log_errors": result.log_errors, **png_stats(args[1])}))
    return 0 if not (result.errors or result.log_errors) else 1


if __name__ == "__main__":
    sys.exit(main())
