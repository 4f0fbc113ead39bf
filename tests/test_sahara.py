"""Sahara greedy head-set search on the planted toy-refusal model, and its subspace-angle helpers."""

import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.analyzers.sahara import subspace_angle, top_right_singular
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
    m = torch.tensor([[3.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    top = top_right_singular(m, 1)
    assert abs(float(top[0, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("ablation", ["query_scale", "mean"])
def test_sahara_selects_planted_head_first(toy, task, ablation):
    scores = run_analyzer("sahara", toy, task, steps=2, ablation=ablation)
    (planted,) = TOY_MODELS["toy-refusal"].planted["refusal"]
    choices = scores.provenance["choices"]
    assert choices["selected"][0] == f"{planted[0]}.{planted[1]}"
    assert scores.heads("sahara_angle", k=1) == [planted]
    assert scores.matrix("sahara_order").loc[planted] == 1
    angles = choices["set_angle_per_step"]
    assert angles[0] > 10.0 and len(angles) == 2
    assert "right singular" in choices["singular_vectors"]


def test_sahara_candidates_from_ships_and_rank(toy, task):
    scores = run_analyzer("sahara", toy, task, steps=1, rank=2, candidates=2)
    assert scores.provenance["choices"]["n_candidates"] == 2
    assert scores.provenance["choices"]["selected"] == ["1.1"]
    assert int(scores[scores.metric == "sahara_angle"]["score"].notna().sum()) == 2
    with pytest.raises(HeadscopeError, match="steps"):
        run_analyzer("sahara", toy, task, steps=5, candidates="1.1,1.0")
