"""The HTML report in headless Chromium: every plotly figure renders, no console errors, and the
screenshot is not blank. Chromium (Debian's ``chromium``) is installed by the test set-up when
missing; the tests skip, printing why, only where it cannot be installed."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import struct  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

from headscope.report import build_report  # noqa: E402
from headscope.report.browser import ensure_chromium, is_blank, png_stats, read_png, render  # noqa: E402


@pytest.fixture(scope="module")
def chromium():
    path, reason = ensure_chromium()
    if path is None:
        print(f"SKIP browser tests: {reason}")
        pytest.skip(f"chromium unavailable: {reason}")
    return path


def _png(path, pixels: list[list[tuple[int, int, int]]], filt: int = 0) -> None:
    """Encode an RGB PNG (filter 0 = none, 2 = up) independently of the decoder under test."""
    rows = b""
    prev = bytes(3 * len(pixels[0]))
    for row in pixels:
        raw = bytes(c for px in row for c in px)
        data = raw if filt == 0 else bytes((a - b) & 255 for a, b in zip(raw, prev, strict=True))
        rows += bytes([filt]) + data
        prev = raw

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", len(pixels[0]), len(pixels), 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_png_decoder_and_blankness(tmp_path):
    grad = [[(x * 20, y * 30, (x * y) % 256) for x in range(12)] for y in range(8)]
    for filt in (0, 2):
        _png(tmp_path / f"g{filt}.png", grad, filt)
        w, h, ch, px = read_png(tmp_path / f"g{filt}.png")
        assert (w, h, ch) == (12, 8, 3)
        assert px[(5 * 12 + 7) * 3:(5 * 12 + 7) * 3 + 3] == bytes(grad[5][7])
    _png(tmp_path / "white.png", [[(255, 255, 255)] * 30] * 30)
    assert is_blank(tmp_path / "white.png")
    assert png_stats(tmp_path / "white.png")["non_background"] == 0


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """A report over two real runs: SmolLM2-135M and toy-induction induction scores, plus the
    attention viewer and lens figures on the toy model."""
    import headscope as hs
    from headscope import plots

    tmp = tmp_path_factory.mktemp("report")
    smol = hs.score("smollm2-135m", task="induction", task_params={"n_prompts": 2, "seq_len": 16})
    smol.to_parquet(tmp / "smollm2.parquet")
    toy = hs.load_model("toy-induction")
    hs.score(toy, task="induction", task_params={"n_prompts": 4, "seq_len": 16}).to_parquet(tmp / "toy.parquet")
    prompt = "Monday seven Tuesday nine Friday A Monday seven Tuesday"
    extra = [("attention", plots.attention_viewer(plots.attention_frame(toy, prompt, "0.0,1.0"))),
             ("lens", plots.lens_top_tokens(plots.head_token_frame(toy, prompt, "1.0,1.1", k=5), k=5))]
    page = build_report([tmp / "smollm2.parquet", tmp / "toy.parquet"], tmp / "report.html", extra_figures=extra)
    return page, page.read_text().count('class="plotly-graph-div"')


def test_report_renders_in_chromium(chromium, report_page, tmp_path):
    page, n_figs = report_page
    assert n_figs == 7  # 2 per-run facets, 3 shared metrics side by side, attention, lens
    text = page.read_text()
    assert "provenance" in text and "18." in text  # SmolLM2's induction heads are in layers 17-23
    shot = tmp_path / "report.png"
    result = render(page, chromium, screenshot=shot, size=(1280, 1800))
    assert result.errors == [] and result.log_errors == []
    assert result.plot_divs == n_figs and result.plots == n_figs  # every figure drew its SVG
    stats = png_stats(shot)
    assert not is_blank(shot), stats
    assert stats["colours"] > 50, stats


def test_harness_catches_errors_and_blank_pages(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><div class='plotly-graph-div'></div>"
                   "<script>undefinedFunction();</script></body></html>")
    result = render(bad, chromium)
    assert any("undefinedFunction" in e for e in result.errors)
    assert result.plots == 0 and result.plot_divs == 1  # a div that never rendered is counted
    blank = tmp_path / "blank.html"
    blank.write_text("<html><head></head><body style='background:#fff'></body></html>")
    shot = tmp_path / "blank.png"
    assert render(blank, chromium, screenshot=shot, size=(400, 300)).errors == []
    assert is_blank(shot)
