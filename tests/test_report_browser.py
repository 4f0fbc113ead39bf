"""The HTML report in headless Chromium, driven through Playwright: every plotly figure renders,
no page errors, the screenshot is not blank, and hovering a heatmap cell shows that head's exact
score. Chromium is the system's (Debian's ``chromium``, installed by the test set-up when
missing, see ``tests/browser_harness.py``); the tests skip, printing why, only where no Chromium
can be found or installed."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
from browser_harness import (  # noqa: E402
    count_plots,
    ensure_chromium,
    hover_text,
    is_blank,
    open_page,
    png_stats,
    read_png,
    render,
)

import headscope as hs  # noqa: E402
from headscope.report import build_report  # noqa: E402


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
    assert result.errors == []
    assert result.plot_divs == n_figs and result.plots == n_figs  # every figure drew its SVG
    stats = png_stats(shot)
    assert not is_blank(shot), stats
    assert stats["colours"] > 50, stats


def _significant(value: float, digits: int = 6) -> float:
    """Half a unit in the last of ``digits`` significant digits of ``value``."""
    return 0.5 * 10 ** (math.floor(math.log10(abs(value))) - digits + 1) if value else 1e-12


def test_hovering_a_heatmap_cell_shows_its_exact_score(chromium, report_page):
    """Move the mouse over SmolLM2's top induction head in the report's first figure: the
    tooltip names that head and shows its score from the Parquet file to 6 significant digits."""
    page, _ = report_page
    scores = hs.read_parquet(page.parent / "smollm2.parquet")
    rows = scores[scores["metric"] == "induction"]
    best = rows.loc[rows["score"].idxmax()]
    worst = rows.loc[rows["score"].idxmin()]
    with open_page(page, chromium, size=(1280, 1000)) as (tab, errors):
        assert count_plots(tab)[0] == count_plots(tab)[1]
        templates = tab.evaluate("() => document.querySelectorAll('.plotly-graph-div')[0]._fullData"
                                 ".map(t => t.hovertemplate || '')")
        trace = next(i for i, t in enumerate(templates) if t.startswith("induction ="))
        for row in (best, worst):
            tip = hover_text(tab, 0, trace, int(row["layer"]), int(row["head"]))
            assert f"head {int(row['layer'])}.{int(row['head'])}" in tip, tip
            shown = float(re.search(r"induction = ([-+0-9.e]+)", tip).group(1))
            assert abs(shown - float(row["score"])) <= _significant(float(row["score"])), (tip, row["score"])
        assert errors.all == []


def test_harness_catches_errors_and_blank_pages(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><div class='plotly-graph-div'></div>"
                   "<script>console.error('drawn badly'); undefinedFunction();</script></body></html>")
    with open_page(bad, chromium, settle_ms=1000) as (tab, errors):
        assert any("undefinedFunction" in e for e in errors.page_errors), errors
        assert any("drawn badly" in e for e in errors.console_errors), errors
        assert count_plots(tab) == (0, 1)  # a div that never rendered is counted
    blank = tmp_path / "blank.html"
    blank.write_text("<html><head></head><body style='background:#fff'></body></html>")
    shot = tmp_path / "blank.png"
    assert render(blank, chromium, screenshot=shot, size=(400, 300)).errors == []
    assert is_blank(shot)
