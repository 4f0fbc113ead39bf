"""Make the README screenshots with the browser-test harness (tests/browser_harness.py: Playwright
driving the system Chromium), from real SmolLM2-135M runs.

    HF_HUB_OFFLINE=1 .venv/bin/python docs/screenshots.py [IOI_RECIPE_OUTPUT_DIR]

Writes docs/img/induction_heatmaps.png (pattern scores of every head), docs/img/attention_viewer.png
(attention patterns of the top induction heads) and, given the output directory of
``headscope run recipes/ioi_circuit.yaml --model smollm2-135m``, docs/img/ioi_circuit.png.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import headscope as hs
from headscope import plots

IMG = Path(__file__).resolve().parent / "img"
sys.path.insert(0, str(IMG.parent.parent / "tests"))  # the harness is test tooling, not the library

from browser_harness import ensure_chromium, png_stats, render  # noqa: E402


def shoot(fig, name: str, browser: str, size: tuple[int, int]) -> None:
    fig.update_layout(width=size[0] - 40, height=size[1] - 40)
    with tempfile.TemporaryDirectory() as tmp:
        page = plots.save_html(fig, Path(tmp) / f"{name}.html")
        out = IMG / f"{name}.png"
        result = render(page, browser, screenshot=out, size=size)
    assert not result.errors and result.plots == 1, (name, result.errors)
    print(out, png_stats(out), f"{out.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    browser, reason = ensure_chromium()
    if browser is None:
        raise SystemExit(f"no chromium: {reason}")
    IMG.mkdir(exist_ok=True)
    model = hs.load_model("smollm2-135m")
    scores = hs.score(model, task="induction", task_params={"n_prompts": 8, "seq_len": 32})
    shoot(plots.facet_heatmaps(scores, title="SmolLM2-135M: attention-pattern scores of all 270 heads"),
          "induction_heatmaps", browser, (1200, 820))
    heads = scores.heads("induction", k=2) + scores.heads("previous_token", k=1)
    frame = plots.attention_frame(model, " The quick brown fox jumps over the lazy dog. The quick brown fox jumps", heads)
    shoot(plots.attention_viewer(frame, dest=14, title="SmolLM2-135M: induction and previous-token heads"),
          "attention_viewer", browser, (1200, 700))
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
        classes = hs.read_parquet(run / "head_classes.parquet")
        edges = plots.path_frame({
            str(hs.read_parquet(run / f"{s}.parquet").provenance["choices"]["receivers"]): hs.read_parquet(run / f"{s}.parquet")
            for s in ("pp_logits", "pp_name_movers_q", "pp_s_inhibition_v")})
        shoot(plots.circuit_graph(classes, edges, edge_threshold=0.02, title="SmolLM2-135M: IOI circuit from path patching"),
              "ioi_circuit", browser, (1100, 560))


if __name__ == "__main__":
    main()
