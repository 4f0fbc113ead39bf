"""Figures: each is a function of HeadScores / a tidy frame and returns a plotly Figure whose
data match the inputs; attention and lens data are checked against the planted toy-induction
circuit and an independent hook."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from headscope import plots  # noqa: E402
from headscope.errors import HeadscopeError  # noqa: E402
from headscope.results import HeadScores  # noqa: E402

PROMPT = "Monday seven Tuesday nine Friday A Monday seven Tuesday"


@pytest.fixture(scope="module")
def toy():
    import headscope as hs

    return hs.load_model("toy-induction")


def _scores(seed: int = 0, signed: bool = False, model: str = "m") -> HeadScores:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4, 3)) if signed else rng.uniform(size=(4, 3))
    parts = [HeadScores.from_matrix(a, model=model, task="t", analyzer="x", metric="alpha",
                                    extra={"stderr": np.full((4, 3), 0.01), "n": 7}),
             HeadScores.from_matrix(a ** 2, model=model, task="t", analyzer="x", metric="beta")]
    return HeadScores.concat(parts, provenance={"model": {"model_id": model}})


def test_head_heatmap_values_hover_and_colours():
    s = _scores(signed=True)
    fig = plots.head_heatmap(s, "alpha")
    assert isinstance(fig, go.Figure)
    trace = fig.data[0]
    np.testing.assert_allclose(np.asarray(trace.z, dtype=float), s.matrix("alpha").to_numpy())
    assert trace.zmid == 0 and trace.zmin == -trace.zmax  # diverging, symmetric about 0 for signed
    assert "stderr = 0.01" in trace.customdata[1][2] and "n = 7" in trace.customdata[1][2]
    assert "head 1.2" in trace.customdata[1][2]
    unsigned = plots.head_heatmap(_scores(signed=False), "beta").data[0]
    assert unsigned.zmid is None and unsigned.colorscale[0][1] != trace.colorscale[0][1]


def test_facets_by_metric_and_by_model():
    s = _scores()
    fig = plots.facet_heatmaps(s)
    assert [t.name for t in fig.data] == ["alpha", "beta"]
    both = HeadScores.concat([_scores(0, model="m1"), _scores(1, model="m2")])
    fig = plots.facet_heatmaps(both, metrics=["alpha"], by="model")
    assert [t.name for t in fig.data] == ["m1", "m2"]
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), _scores(1).matrix("alpha").to_numpy())
    assert fig.data[0].zmax == fig.data[1].zmax  # one metric -> shared colour range
    fig = plots.facet_heatmaps({"A": _scores(0), "B": _scores(1)}, metrics=["beta"])
    assert len(fig.data) == 2
    with pytest.raises(HeadscopeError):
        plots.facet_heatmaps(s, by="colour")


def test_attention_frame_matches_hook_and_planted_circuit(toy):
    frame = plots.attention_frame(toy, PROMPT, [(0, 0), (1, 0)])
    tokens = toy.to_tokens(PROMPT)
    got = {}

    def keep(x, hook):  # independent capture of the bridge's attention probabilities
        got[hook.name] = x.detach()

    toy.bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", keep)])
    pattern = next(iter(got.values()))[0, 0]  # head 1.0: (dest, src)
    part = frame[frame["label"] == "1.0"]
    np.testing.assert_allclose(part["weight"].to_numpy().reshape(pattern.shape), pattern.numpy(), atol=1e-6)
    sums = frame.groupby(["label", "dest"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    # planted: at the last "Tuesday" (pos 9), induction head 1.0 attends to the token after the
    # first "Tuesday" (pos 3 -> pos 4); previous-token head 0.0 attends to pos 8
    n = tokens.shape[1]
    last = part[part["dest"] == n - 1]
    assert int(last.loc[last["weight"].idxmax(), "src"]) == 4
    prev = frame[(frame["label"] == "0.0") & (frame["dest"] == n - 1)]
    assert int(prev.loc[prev["weight"].idxmax(), "src"]) == n - 2
    assert frame["dest_token"].iloc[-1].endswith("Tuesday")


def test_attention_viewer_structure(toy):
    frame = plots.attention_frame(toy, PROMPT, "0.0,1.0")
    fig = plots.attention_viewer(frame)
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)]
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    n = int(frame["dest"].max()) + 1
    assert len(heat) == 2 and len(bars) == 2 * n
    assert [b["label"] for b in fig.layout.updatemenus[0].buttons] == ["0.0", "1.0"]
    assert len(fig.layout.sliders[0].steps) == n
    assert sum(bool(b.visible) for b in bars) == 2  # the selected destination, both heads
    assert fig.layout.shapes[0].y0 == n - 1 - 0.5  # destination row outlined
    with pytest.raises(HeadscopeError):
        plots.attention_viewer(frame.drop(columns=["weight"]))


def test_lens_promotes_the_induced_token(toy):
    frame = plots.head_token_frame(toy, PROMPT, [(1, 0)], k=5)
    promoted = frame[frame["direction"] == "promoted"].sort_values("value", ascending=False)
    # planted OV of 1.0 copies the attended token ("nine", after the first Tuesday) into the logits
    assert promoted["token"].iloc[0].strip() == "nine"
    assert (frame[frame["direction"] == "suppressed"]["value"] <= promoted["value"].min()).all()
    fig = plots.lens_top_tokens(frame, k=5)
    assert len(fig.data) == 2 and fig.layout.yaxis.ticktext[-1] == repr(promoted["token"].iloc[0])[1:-1]


def _patch_frame() -> HeadScores:
    parts = []
    for pos, scale in (("IO", 0.1), ("S2", 0.5), ("END", 0.9)):
        m = np.arange(12, dtype=float).reshape(4, 3) * scale - 3
        parts.append(HeadScores.from_matrix(m, model="m", task="ioi", analyzer="activation_patching",
                                            metric=f"z_patch@{pos}", extra={"position": pos}))
    return HeadScores.concat(parts)


def test_position_patching_heatmap():
    s = _patch_frame()
    fig = plots.position_patching_heatmap(s, top_k=None)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert list(fig.data[0].x) == ["IO", "S2", "END"] and z.shape == (12, 3)
    assert z[list(fig.data[0].y).index("3.2"), 2] == pytest.approx(11 * 0.9 - 3)
    top = plots.position_patching_heatmap(s, top_k=4)
    assert len(top.data[0].y) == 4
    with pytest.raises(HeadscopeError):
        plots.position_patching_heatmap(_scores())


def test_sender_receiver_and_circuit_graph():
    rng = np.random.default_rng(0)
    runs = {}
    for rec in ("resid_final", "3.1,3.2:q"):
        m = -rng.uniform(size=(4, 3))
        m[3] = np.nan  # senders that cannot reach the receivers
        runs[rec] = HeadScores.from_matrix(m, model="m", task="ioi", analyzer="path_patching", metric="path_patch")
    paths = plots.path_frame(runs)
    assert set(paths["receiver"]) == set(runs) and paths["score"].notna().all()
    fig = plots.sender_receiver_matrix(paths, top_k=None)
    assert list(fig.data[0].x) == list(runs) and len(fig.data[0].y) == 9
    classes = {"3.1": "name mover", "3.2": "name mover", "1.0": "S-inhibition", "0.0": ""}
    paths.loc[paths["sender"] == "1.0", "score"] = -0.9
    graph = plots.circuit_graph(classes, paths, edge_threshold=0.5)
    names = [t.name for t in graph.data if t.mode == "markers+text"]
    assert "name mover" in names and "S-inhibition" in names and "logits" in names
    edges = [t for t in graph.data if t.mode == "lines"]
    assert any("1.0 → 3.1 (q)" in t.text for t in edges)  # a multi-head receiver: one edge per head
    with pytest.raises(HeadscopeError):
        plots.circuit_graph({"0.0": ""})


def test_rank_comparison_and_compare_results():
    from headscope.report.compare import compare_results, spearman

    a, b = _scores(0), _scores(1)
    cmp = compare_results(a, b, k=3)
    assert list(cmp.summary["metric"]) == ["alpha", "beta"]
    xa, xb = a.matrix("alpha").to_numpy().ravel(), b.matrix("alpha").to_numpy().ravel()
    ref = np.corrcoef(xa.argsort().argsort(), xb.argsort().argsort())[0, 1]  # no ties in random floats
    assert cmp.summary["spearman"].iloc[0] == pytest.approx(ref)
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    fig = plots.rank_comparison(cmp, "alpha")
    assert len(fig.data[0].x) == 12
    diff = np.asarray(fig.data[2].z, dtype=float)
    np.testing.assert_allclose(diff, (b.matrix("alpha") - a.matrix("alpha")).to_numpy())


def test_save_html_is_self_contained(tmp_path):
    path = plots.save_html(plots.head_heatmap(_scores()), tmp_path / "f.html")
    text = path.read_text()
    assert "<script src=\"http" not in text and len(text) > 1_000_000  # plotly.js inlined
    assert torch.is_tensor(torch.zeros(1))
