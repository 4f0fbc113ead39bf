"""Select-and-copy heads on MCQA: data/splits, key-token location, and the paper preset (end-of-line
keys, pre-RoPE QK) against a raw Hugging Face computation with q_proj/k_proj hooks."""

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


def _line_end_tokens(tokenizer, ids):
    """Independent of mcqa.py: the option lines end at the 2nd..5th newline-holding tokens
    after the token holding "Question"."""
    start = next(i for i in range(len(ids)) if "Question" in tokenizer.decode([ids[i]]))
    newlines = [i for i in range(start, len(ids)) if "\n" in tokenizer.decode([ids[i]])]
    return newlines[1:5]


@pytest.mark.smollm2
@pytest.mark.parametrize("chat", [False, True])
def test_key_tokens_hold_letters_and_line_ends(smol, chat):
    task = make_task("mcqa", n_val=4, chat=chat)
    val, _ = task.split(smol)
    text = smol.tokenizer.decode(val[0].ids)
    assert ("<|im_start|>assistant" in text) == chat and text.endswith("Answer:")
    for it in val:
        letters = [smol.tokenizer.decode([it.ids[m]]).strip() for m in it.markers]
        assert letters == ["A", "B", "C", "D"]
        assert it.eols == _line_end_tokens(smol.tokenizer, it.ids)
        assert it.keys("eol") == it.eols and it.keys("letter") == it.markers
        assert all(m < e for m, e in zip(it.markers, it.eols, strict=True))


def _hf_scores(model, items):
    """Raw HF, one unpadded prompt at a time: pre-RoPE q_proj/k_proj outputs per layer, keys at
    the line-end tokens found by :func:`_line_end_tokens` and at the letter tokens (decoded).

    Returns:
        (qk at the eol keys, qk at the letter keys), each (n_items, n_layers, n_heads, 4),
        and the model's letter logits (n_items, 4) at the last token.
    """
    hf = model.bridge.original_model
    d, group = model.d_head, model.n_heads // model.n_kv_heads
    seen = {}
    hooks = []
    for i, layer in enumerate(hf.model.layers):
        hooks.append(layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("q", i), o[0])))
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("k", i), o[0])))
    letters = [model.tokenizer.encode(" " + c, add_special_tokens=False)[-1] for c in "ABCD"]
    eol = np.zeros((len(items), model.n_layers, model.n_heads, 4))
    let = np.zeros_like(eol)
    logits = np.zeros((len(items), 4))
    try:
        for n, it in enumerate(items):
            eols = _line_end_tokens(model.tokenizer, it.ids)
            starts = [i for i in range(len(it.ids)) if model.tokenizer.decode([it.ids[i]]).strip() in ("A", "B", "C", "D")
                      and "\n" in model.tokenizer.decode(it.ids[i - 1:i])]
            assert len(starts) == 4
            with torch.no_grad():
                out = hf(torch.tensor([it.ids]))
            logits[n] = out.logits[0, -1, letters].numpy()
            for layer in range(model.n_layers):
                q = seen[("q", layer)][-1].reshape(model.n_heads, d)  # (head, d_head) at the last token
                k = seen[("k", layer)].reshape(-1, model.n_kv_heads, d)  # (pos, kv_head, d_head)
                for h in range(model.n_heads):
                    eol[n, layer, h] = (k[eols, h // group] @ q[h]).numpy()
                    let[n, layer, h] = (k[starts, h // group] @ q[h]).numpy()
    finally:
        for hk in hooks:
            hk.remove()
    return eol, let, logits


@pytest.mark.smollm2
def test_paper_preset_matches_raw_hf_qk_at_line_ends(smol, tmp_path):
    qs = load_json("mcqa.json")["questions"][:10]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(qs))
    task = make_task("mcqa", path=str(path), n_val=5)
    val, test = task.split(smol)
    hand_eol, hand_letter, hand_logits = _hf_scores(smol, val + test)
    qk, att = option_scores(smol, val + test, key="eol", qk="projected")
    np.testing.assert_allclose(qk, hand_eol, rtol=1e-3, atol=1e-3)
    assert np.allclose(att.sum(-1) <= 1.0 + 1e-5, True)
    qk_letter, _ = option_scores(smol, val + test, key="letter", qk="projected")
    np.testing.assert_allclose(qk_letter, hand_letter, rtol=1e-3, atol=1e-3)

    # the post-RoPE convention reads hook_attn_scores: check it at the eol keys on one item
    it = val[1]
    scores, _ = option_scores(smol, [it], key="eol", qk="scores")
    _, cache = smol.bridge.run_with_cache(torch.tensor([it.ids]))
    for layer, head in ((20, 4), (3, 1)):
        q = cache[f"blocks.{layer}.attn.hook_rot_q"][0, -1, head]
        k = cache[f"blocks.{layer}.attn.hook_rot_k"][0, :, smol.kv_head(head)]
        ref = (k[it.eols] @ q / smol.d_head**0.5).detach().numpy()
        np.testing.assert_allclose(scores[0, layer, head], ref, atol=1e-3)

    gold = np.array([i.answer for i in val + test])[:, None, None]
    acc_eol = hand_eol.argmax(-1) == gold  # (item, layer, head)
    acc_letter = hand_letter.argmax(-1) == gold
    assert (acc_eol != acc_letter).any()  # the two key choices give different head answers
    res = run_analyzer("select_and_copy", smol, task, preset="paper")
    assert res.provenance["preset_options"] == {"key": "eol", "qk": "projected"}
    nv = len(val)
    np.testing.assert_allclose(res.matrix("qk_acc_val").to_numpy(), acc_eol[:nv].mean(0))
    np.testing.assert_allclose(res.matrix("qk_acc_test").to_numpy(), acc_eol[nv:].mean(0))
    ch = res.provenance["choices"]
    model_acc = (hand_logits[nv:].argmax(-1) == gold[nv:, 0, 0]).mean()
    assert ch["test_acc_model_letters"] == pytest.approx(model_acc)
    val_acc = acc_eol[:nv].mean(0)
    best = tuple(map(int, ch["best_qk_head"].split(".")))
    assert val_acc[best] == val_acc.max()
    assert ch["test_acc_best_qk_head"] == pytest.approx(acc_eol[nv:].mean(0)[best])
    letter = run_analyzer("select_and_copy", smol, task, key="letter")
    np.testing.assert_allclose(letter.matrix("qk_acc_val").to_numpy(), acc_letter[:nv].mean(0))


def test_bad_key_or_qk_is_one_line_error():
    model = headscope.load_model("toy-induction")
    with pytest.raises(HeadscopeError, match="key must be one of eol, letter"):
        run_analyzer("select_and_copy", model, make_task("mcqa"), key="marker")
    with pytest.raises(HeadscopeError, match="qk must be one of projected, scores"):
        run_analyzer("select_and_copy", model, make_task("mcqa"), qk="rope")
