"""OV copying score, RazorAttention echo/induction scores and the KV-policy export."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from headscope import load_model
from headscope.analyzers import run_analyzer
from headscope.analyzers.copying_heads import copying_fraction
from headscope.analyzers.echo_induction import echo_induction_masks, group_max
from headscope.errors import HeadscopeError
from headscope.kv.policy import build_kv_policy, export_kv_policy
from headscope.tasks import make_task
from headscope.trace import trace


def _label(head):
    return f"{head[0]}.{head[1]}"


@pytest.mark.parametrize("name", ["toy-copying", "toy-successor"])
def test_planted_copying_head_found_and_others_not(name):
    model = load_model(name)
    scores = run_analyzer("ov_copying", model, make_task("succession"))
    planted = list(model.planted["copying"])
    assert scores.heads("copying", k=len(planted)) == planted
    rest = scores[(scores.metric == "copying") & ~scores.label.isin([_label(h) for h in planted])]
    assert rest.score.max() < 0.2
    for h in planted:
        row = scores[(scores.metric == "copying_rank1") & (scores.label == _label(h))]
        assert float(row.score.iloc[0]) == 1.0


def test_ties_count_against_the_own_token():
    logits = torch.zeros(3, 10)
    logits[1, 4] = 1.0  # token 4 strictly first
    ids = torch.tensor([0, 4, 2])
    assert copying_fraction(logits, ids, top_k=5) == pytest.approx((1 / 3, 1 / 3))


def test_echo_induction_masks_by_hand():
    tokens = torch.tensor([[9, 1, 2, 3, 1, 2, 3]])  # BOS=9, R=[1,2,3] twice
    masks = echo_induction_masks(tokens, first_query=4)
    echo, ind = masks[0, 0], masks[0, 1]
    assert echo[:4].sum() == 0  # first copy has no query rows
    assert [echo[q].nonzero().flatten().tolist() for q in range(4, 7)] == [[1], [2], [3]]
    assert [ind[q].nonzero().flatten().tolist() for q in range(4, 7)] == [[2], [3], [4]]


def test_toy_induction_head_found_by_razor_scores():
    model = load_model("toy-induction")
    task = make_task("induction", n_prompts=3, seq_len=24, n_repeats=3)
    scores = run_analyzer("echo_induction", model, task)
    planted = list(model.planted["induction"])
    assert scores.heads("induction", k=1) == planted
    # independent computation from the full pattern for the planted head
    layer, head = planted[0]
    tokens = task.tokens(model)
    pattern = trace(model, tokens, acts=("pattern",), layers=[layer]).get("pattern", layer)[:, head]
    first = tokens.shape[1] - 2 * task.seq_len
    want = 0.0
    for b in range(tokens.shape[0]):
        rows = []
        for q in range(first, tokens.shape[1]):
            ks = [k + 1 for k in range(q) if tokens[b, k] == tokens[b, q] and k + 1 <= q]
            rows.append(float(pattern[b, q, ks].sum()))
        want += np.mean(rows) / tokens.shape[0]
    got = float(scores[(scores.metric == "induction") & (scores.label == _label(planted[0]))].score.iloc[0])
    assert abs(got - want) < 1e-5


def test_group_max_and_policy_gqa(tmp_path):
    model = load_model("toy-gqa")
    task = make_task("induction", n_prompts=2, seq_len=16, n_repeats=2)
    per_head = run_analyzer("echo_induction", model, task)
    grouped = run_analyzer("echo_induction", model, task, kv_group="max")
    m = per_head.matrix("echo").to_numpy()  # (2 layers, 4 query heads); KV head = head // 2
    hand = np.repeat(m.reshape(2, 2, 2).max(-1), 2, axis=1)  # max over each KV group, per query head
    np.testing.assert_allclose(grouped.matrix("echo").to_numpy(), hand)
    np.testing.assert_allclose(group_max(m, model), hand)
    with pytest.raises(HeadscopeError):
        build_kv_policy(per_head, {"retrieval": 0.1})


def _hand_policy(matrices, fractions, n_kv):
    """Hand count: per metric, group max over query heads, top round(f * n_groups) groups, union."""
    kept = set()
    for metric, frac in fractions.items():
        m = matrices[metric]  # (n_layers, n_heads)
        g = m.reshape(m.shape[0], n_kv, -1).max(-1)  # (n_layers, n_kv)
        order = sorted((-g[layer, kv], layer, kv) for layer in range(g.shape[0]) for kv in range(n_kv))
        kept |= {(layer, kv) for _, layer, kv in order[: round(frac * g.size)]}
    return kept


@pytest.mark.parametrize("kv_group", ["none", "max"])
def test_kv_policy_keeps_the_asked_share_of_kv_groups_on_gqa(tmp_path, kv_group):
    model = load_model("toy-gqa")  # 2 layers x 4 query heads, 2 KV heads: 4 KV groups
    task = make_task("induction", n_prompts=2, seq_len=16, n_repeats=2)
    scores = run_analyzer("echo_induction", model, task, kv_group=kv_group)
    ind = scores.matrix("induction").to_numpy()
    policy = build_kv_policy(scores, {"induction": 0.25})
    kept = {(g["layer"], g["kv_head"]) for g in policy["keep_full_kv_groups"]}
    assert kept == _hand_policy({"induction": ind}, {"induction": 0.25}, 2) and len(kept) == 1
    assert policy["n_kv_groups_total"] == 4 and policy["kept_kv_share"] == 0.25
    # every query head of a kept group, and only those, is listed with its KV head
    want = sorted((layer, h) for layer, kv in kept for h in range(4) if h // 2 == kv)
    assert sorted((h["layer"], h["head"]) for h in policy["keep_full_kv_heads"]) == want
    assert all(h["kv_head"] == model.kv_head(h["head"]) for h in policy["keep_full_kv_heads"])
    if kv_group == "none":  # here the top 25% of *query* heads would hold 2 of the 4 KV groups
        top_q = np.argsort(-ind, axis=None, kind="stable")[:2]
        assert len({(int(i) // 4, int(i) % 4 // 2) for i in top_q}) == 2
    path = export_kv_policy(scores, tmp_path / "kv.json")
    saved = json.loads(path.read_text())
    assert saved["fractions"] == {"echo": 0.01, "induction": 0.14}
    # defaults on 4 groups: echo round(0.04) = 0 groups, induction round(0.56) = 1 group
    both = {"echo": scores.matrix("echo").to_numpy(), "induction": ind}
    assert {(g["layer"], g["kv_head"]) for g in saved["keep_full_kv_groups"]} == _hand_policy(
        both, {"echo": 0.01, "induction": 0.14}, 2)


@pytest.mark.smollm2
def test_smollm2_default_kv_policy_keeps_razorattention_share(smollm2):
    task = make_task("induction", n_prompts=2, seq_len=24, n_repeats=2)
    scores = run_analyzer("echo_induction", smollm2, task)
    policy = build_kv_policy(scores)  # echo 1%, induction 14% of the 30 x 3 = 90 KV groups
    both = {m: scores.matrix(m).to_numpy() for m in ("echo", "induction")}
    hand = _hand_policy(both, {"echo": 0.01, "induction": 0.14}, smollm2.n_kv_heads)
    kept = {(g["layer"], g["kv_head"]) for g in policy["keep_full_kv_groups"]}
    assert kept == hand and 13 <= len(kept) <= 14  # round(0.9) = 1 echo + round(12.6) = 13 induction groups
    assert len(policy["keep_full_kv_heads"]) == 3 * len(kept)
    assert policy["kept_kv_share"] == pytest.approx(len(kept) / 90)


def test_cli_exports_kv_policy(tmp_path):
    from headscope.cli.app import main

    out, pol, plot = tmp_path / "s.parquet", tmp_path / "kv.json", tmp_path / "s.html"
    main(["score", "--model", "toy-induction", "--task", "induction", "--analyzer", "echo_induction",
          "-o", "n_prompts=2", "-o", "seq_len=16", "--out", str(out), "--plot", str(plot),
          "--export-kv-policy", str(pol), "--kv-fraction", "induction=0.25"])
    policy = json.loads(pol.read_text())
    assert {"layer": 1, "head": 0, "kv_head": 0, "reasons": ["induction"]} in policy["keep_full_kv_heads"]
    assert out.exists() and plot.exists()


@pytest.mark.smollm2
def test_smollm2_copying_scores_are_sane():
    model = load_model("smollm2-135m")
    task = make_task("succession")
    scores = run_analyzer("ov_copying", model, task, max_tokens=60)
    copy = scores.matrix("copying").to_numpy()
    assert copy.shape == (model.n_layers, model.n_heads)
    # copying heads are a minority; top-1 copying implies top-5 copying
    assert (copy > 0.5).mean() < 0.2
    assert (scores.matrix("copying_rank1").to_numpy() <= copy + 1e-12).all()
