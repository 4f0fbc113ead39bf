"""Sahara greedy head-set search: the planted toy-refusal model, the subspace-angle helpers on a
constructed left-vs-right case, and the paper preset on SmolLM2 against a raw Hugging Face
computation (hidden_states[-1], query scaling by a q_proj hook, numpy SVD)."""

import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.analyzers.sahara import subspace_angle, top_singular
from headscope.errors import HeadscopeError
from headscope.tasks import make_task
from headscope.toy import TOY_MODELS
from headscope.toy.refusal import TRIGGER

WORDS = "one two three four five six seven eight nine ten the and of is a first second third".split()


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-refusal")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("sahara")
    rng = random.Random(1)
    harm = []
    for _ in range(12):
        w = rng.sample(WORDS, 5 + rng.randrange(3))
        w.insert(rng.randrange(len(w)), TRIGGER)
        harm.append(" ".join(w))
    (d / "harm.txt").write_text("\n".join(harm))
    (d / "safe.txt").write_text("\n".join(" ".join(rng.sample(WORDS, 6)) for _ in range(12)))
    return make_task("safety", source=str(d / "harm.txt"), harmless=str(d / "safe.txt"), n_prompts=12)


def test_angle_helpers():
    e = torch.eye(4, dtype=torch.float64)
    assert subspace_angle(e[:, :1], e[:, :1]) == pytest.approx(0.0, abs=1e-6)
    assert subspace_angle(e[:, :1], e[:, 1:2]) == pytest.approx(90.0)
    v = (e[:, 0] + e[:, 1]) / 2**0.5
    assert subspace_angle(e[:, :1], v[:, None]) == pytest.approx(45.0)


def _hand_angle(a: np.ndarray, b: np.ndarray, side: str) -> float:
    """Angle (degrees) between the top left (U) or right (V) singular vectors, by numpy."""
    ua, _, vta = np.linalg.svd(a, full_matrices=False)
    ub, _, vtb = np.linalg.svd(b, full_matrices=False)
    x, y = (ua[:, 0], ub[:, 0]) if side == "left" else (vta[0], vtb[0])
    return float(np.degrees(np.arccos(min(1.0, abs(float(x @ y))))))


def test_left_and_right_singular_vectors_differ_on_a_constructed_case():
    # 3 requests x 2 dims. Adding the third request along the same direction moves the
    # request-space (left) vector by 45 degrees but leaves the d_model (right) direction alone.
    base = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    ablated = np.array([[3.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    left = subspace_angle(top_singular(torch.tensor(base), 1, "left"), top_singular(torch.tensor(ablated), 1, "left"))
    right = subspace_angle(top_singular(torch.tensor(base), 1, "right"), top_singular(torch.tensor(ablated), 1, "right"))
    assert left == pytest.approx(_hand_angle(base, ablated, "left")) == pytest.approx(45.0)
    assert right == pytest.approx(_hand_angle(base, ablated, "right"), abs=1e-6) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for side in ("left", "right"):
        ours = subspace_angle(top_singular(torch.tensor(a), 1, side), top_singular(torch.tensor(b), 1, side))
        assert ours == pytest.approx(_hand_angle(a, b, side), abs=1e-9)
    assert top_singular(torch.tensor(a), 2, "left").shape == (6, 2)
    assert top_singular(torch.tensor(a), 2, "right").shape == (5, 2)


# mean_mask (query := its layer's mean query) keeps half the planted query on this 2-head toy, so it is
# checked against a raw-HF reference in test_ships.py instead.
@pytest.mark.parametrize("ablation", ["query_scale", "mean_z"])
def test_sahara_selects_planted_head_first(toy, task, ablation):
    scores = run_analyzer("sahara", toy, task, steps=2, ablation=ablation)
    (planted,) = TOY_MODELS["toy-refusal"].planted["refusal"]
    choices = scores.provenance["choices"]
    assert choices["selected"][0] == f"{planted[0]}.{planted[1]}"
    assert scores.heads("sahara_angle", k=1) == [planted]
    assert scores.matrix("sahara_order").loc[planted] == 1
    angles = choices["set_angle_per_step"]
    assert angles[0] > 10.0 and len(angles) == 2
    assert "left singular" in choices["singular_vectors"]
    assert choices["representation"].startswith("ln_final.hook_out")


def test_sahara_candidates_from_ships_and_rank(toy, task):
    scores = run_analyzer("sahara", toy, task, steps=1, rank=2, candidates=2)
    assert scores.provenance["choices"]["n_candidates"] == 2
    assert scores.provenance["choices"]["selected"] == ["1.1"]
    assert int(scores[scores.metric == "sahara_angle"]["score"].notna().sum()) == 2
    with pytest.raises(HeadscopeError, match="steps"):
        run_analyzer("sahara", toy, task, steps=5, candidates="1.1,1.0")


def test_bad_vectors_or_representation_is_one_line_error(toy, task):
    with pytest.raises(HeadscopeError, match="left or right"):
        run_analyzer("sahara", toy, task, steps=1, vectors="up")
    with pytest.raises(HeadscopeError, match="final_norm or resid_post"):
        run_analyzer("sahara", toy, task, steps=1, representation="final")


def _hf_representations(model, tokens, last, head, eps):
    """Raw HF: each prompt alone (unpadded), ``head``'s query scaled by ``eps`` at q_proj's output.

    Returns:
        (after the final norm: ``hidden_states[-1]``, before it: the norm's input), each (n, d_model).
    """
    hf = model.bridge.original_model
    d_head = model.d_head
    hooks, seen = [], {}
    if head is not None:
        layer, h = head

        def scale_q(mod, inp, out):
            out = out.clone()
            out[..., h * d_head:(h + 1) * d_head] *= eps
            return out

        hooks.append(hf.model.layers[layer].self_attn.q_proj.register_forward_hook(scale_q))
    hooks.append(hf.model.norm.register_forward_pre_hook(lambda mod, args: seen.__setitem__("pre", args[0])))
    post, pre = [], []
    try:
        for i in range(tokens.shape[0]):
            with torch.no_grad():
                out = hf(tokens[i, : int(last[i]) + 1][None], output_hidden_states=True)
            post.append(out.hidden_states[-1][0, -1].double().numpy())
            pre.append(seen["pre"][0, -1].double().numpy())
    finally:
        for hk in hooks:
            hk.remove()
    return np.stack(post), np.stack(pre)


@pytest.mark.smollm2
def test_paper_preset_matches_raw_hf_left_vectors_after_final_norm(smollm2):
    """Paper preset = left singular vectors of the post-final-norm states, eps 1e-5.

    On these candidates the paper's choice picks 1.2, while right vectors or the pre-norm state
    pick 10.3: a deviation in either choice fails the test.
    """
    cands = [(1, 2), (10, 3), (15, 7), (0, 4)]
    task = make_task("safety", n_prompts=8)
    tokens, last = task.padded(smollm2, "harmful")
    base_post, base_pre = _hf_representations(smollm2, tokens, last, None, 1e-5)
    hand = {"left_post": {}, "right_pre": {}, "right_post": {}, "left_pre": {}}
    for head in cands:
        post, pre = _hf_representations(smollm2, tokens, last, head, 1e-5)
        hand["left_post"][head] = _hand_angle(base_post, post, "left")
        hand["right_post"][head] = _hand_angle(base_post, post, "right")
        hand["left_pre"][head] = _hand_angle(base_pre, pre, "left")
        hand["right_pre"][head] = _hand_angle(base_pre, pre, "right")
    best = {k: max(v, key=v.get) for k, v in hand.items()}
    assert best["left_post"] == (1, 2)
    assert best["right_post"] == best["left_pre"] == best["right_pre"] == (10, 3)

    label = ",".join(f"{a}.{b}" for a, b in cands)
    paper = run_analyzer("sahara", smollm2, task, preset="paper", steps=1, candidates=label)
    default = run_analyzer("sahara", smollm2, task, steps=1, candidates=label)
    other = run_analyzer("sahara", smollm2, task, steps=1, candidates=label, vectors="right", representation="resid_post")
    for res, key in ((paper, "left_post"), (default, "left_post"), (other, "right_pre")):
        got = res.matrix("sahara_angle")
        for head in cands:
            assert got.loc[head] == pytest.approx(hand[key][head], abs=0.02), (key, head)
        assert res.provenance["choices"]["selected"] == ["{}.{}".format(*best[key])]
    assert paper.provenance["preset_options"]["eps"] == 1e-5
    assert paper.provenance["choices"]["eps"] == 1e-5
