"""Select-and-copy heads on MCQA: data/splits, marker location, QK scores against a hand computation."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.analyzers.select_and_copy import option_scores
from headscope.datafiles import load_json
from headscope.errors import HeadscopeError
from headscope.tasks import make_task


def test_builtin_questions_are_balanced_and_split():
    task = make_task("mcqa", n_val=10)
    qs = task.questions()
    counts = np.bincount([q["answer"] for q in qs], minlength=4)
    assert counts.max() - counts.min() <= 1
    raw = {q["question"]: q for q in load_json("mcqa.json")["questions"]}
    for q in qs:  # rotation keeps the correct option text
        orig = raw[q["question"]]
        assert q["options"][q["answer"]] == orig["options"][orig["answer"]]


def test_generated_questions_are_correct_and_seeded():
    from headscope.tasks.mcqa_generated import MONTHS, WEEKDAYS, generated_questions

    qs = generated_questions(80, seed=3)
    assert qs == generated_questions(80, seed=3) and qs != generated_questions(80, seed=4)
    assert len({q["answer"] for q in qs}) == 4
    for q in qs:
        right, text = q["options"][q["answer"]], q["question"]
        assert len(set(q["options"])) == 4
        if " plus " in text:
            a, b = text.removeprefix("What is ").removesuffix("?").split(" plus ")
            assert right == str(int(a) + int(b))
        elif text.startswith("Which day"):
            assert WEEKDAYS.index(right) == (WEEKDAYS.index(text.split()[-1][:-1]) + 1) % 7
        elif text.startswith("Which month"):
            assert MONTHS.index(right) == (MONTHS.index(text.split()[-1][:-1]) + 1) % 12
    task = make_task("mcqa", generated=40)
    assert len(task.questions()) == 48 + 40


def test_bad_user_file(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps([{"question": "x?", "options": ["a"], "answer": 0}]))
    with pytest.raises(HeadscopeError, match="options"):
        make_task("mcqa", path=str(p)).questions()


@pytest.fixture(scope="module")
def smol():
    return headscope.load_model("smollm2-135m")


@pytest.mark.smollm2
@pytest.mark.parametrize("chat", [False, True])
def test_markers_hold_option_letters(smol, chat):
    task = make_task("mcqa", n_val=4, chat=chat)
    val, _ = task.split(smol)
    text = smol.tokenizer.decode(val[0].ids)
    assert ("<|im_start|>assistant" in text) == chat and text.endswith("Answer:")
    for it in val:
        letters = [smol.tokenizer.decode([it.ids[m]]).strip() for m in it.markers]
        assert letters == ["A", "B", "C", "D"]


@pytest.mark.smollm2
def test_qk_scores_match_hand_computation_and_analyzer(smol, tmp_path):
    qs = load_json("mcqa.json")["questions"][:8]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(qs))
    task = make_task("mcqa", path=str(path), n_val=4)
    val, test = task.split(smol)
    qk, att = option_scores(smol, val[:2])
    layer, head = 20, 4
    it = val[1]
    _, cache = smol.bridge.run_with_cache(torch.tensor([it.ids]))
    q = cache[f"blocks.{layer}.attn.hook_rot_q"][0, -1, head]  # (d_head,)
    k = cache[f"blocks.{layer}.attn.hook_rot_k"][0, :, smol.kv_head(head)]  # (pos, d_head)
    ref = (k[it.markers] @ q / smol.d_head**0.5).detach().numpy()
    assert np.allclose(qk[1, layer, head], ref, atol=1e-3)
    assert np.allclose(att[1].sum(-1) <= 1.0 + 1e-5, True)

    scores = run_analyzer("select_and_copy", smol, task)
    ch = scores.provenance["choices"]
    val_acc = scores.matrix("qk_acc_val")
    assert val_acc.values.max() == pytest.approx(val_acc.loc[tuple(map(int, ch["best_qk_head"].split(".")))])
    for key in ("test_acc_best_qk_head", "test_acc_best_attn_head", "test_acc_model_letters"):
        assert 0.0 <= ch[key] <= 1.0
    assert ch["n_test"] == 4
