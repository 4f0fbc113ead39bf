"""Exact activation patching equals TransformerLens; attribution patching and DLA agree with it."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching

from headscope import load_model
from headscope.analyzers import run_analyzer
from headscope.analyzers.direct_logit_attribution import direct_logit_attribution_values
from headscope.patching import PatchEngine, patch_all_heads
from headscope.patching.attribution import attribution_scores, rank_correlation
from headscope.tasks.induction_contrast import InductionContrastTask
from headscope.tasks.ioi import IOITask


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction")


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def _tl(model, batch, act, setter, index):
    _, cache = model.bridge.run_with_cache(batch.clean)
    return patching.generic_activation_patch(
        model.bridge, batch.corrupted, cache, batch.full_logits_metric,
        patch_setter=setter, activation_name=act, index_df=index,
    )


def test_toy_all_pos_and_by_pos_equal_transformer_lens(toy):
    batch = InductionContrastTask(n_prompts=4, seq_len=6).batch(toy)
    engine = PatchEngine(toy, batch.end, batch.logit_diff, max_rows=8)  # forces several chunks
    with torch.inference_mode():
        ours = patch_all_heads(engine, batch.clean, batch.corrupted).mean()[:, :, 0]
        by_pos = patch_all_heads(engine, batch.clean, batch.corrupted, positions="each").mean()
        _, cache = toy.bridge.run_with_cache(batch.clean)
        tl = patching.get_act_patch_attn_head_out_all_pos(toy.bridge, batch.corrupted, cache, batch.full_logits_metric)
        tl_pos = patching.get_act_patch_attn_head_out_by_pos(toy.bridge, batch.corrupted, cache, batch.full_logits_metric)
    assert (ours - tl).abs().max() <= 1e-4
    assert (by_pos.permute(0, 2, 1) - tl_pos).abs().max() <= 1e-4
    # planted: the induction head 1.0 restores the answer, far more than any other head
    assert ours[1, 0] > 5 * ours.flatten()[[0, 1, 3]].abs().max()


def _hand_patch_at(model, batch, layer, head, where):
    """Exact denoising patch of one head's z at one position per row, by a bridge hook."""
    _, cache = model.bridge.run_with_cache(batch.clean)
    clean_z = cache[f"blocks.{layer}.attn.hook_z"]
    rows = torch.arange(batch.n)

    def patch(z, hook):
        z = z.clone()
        z[rows, where, head] = clean_z[rows, where, head]
        return z

    def metric(tokens, hooks):
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        return float(batch.logit_diff(logits[rows, batch.end]).mean())

    clean, corr = metric(batch.clean, []), metric(batch.corrupted, [])
    patched = metric(batch.corrupted, [(f"blocks.{layer}.attn.hook_z", patch)])
    return (patched - corr) / (clean - corr)


def _spearman(a, b):
    """Pearson correlation of average ranks (ties share their mean rank); None if a side is constant."""

    def ranks(x):
        x = np.asarray(x, dtype=float).ravel()
        r = np.empty(len(x))
        r[np.argsort(x, kind="stable")] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def test_attribution_compare_exact_at_named_positions(toy):
    task = InductionContrastTask(n_prompts=4, seq_len=6)
    batch = task.batch(toy)
    with torch.no_grad():
        res = run_analyzer("attribution_patching", toy, task, positions="named", compare_exact=True)
    corr = res.provenance["choices"]["rank_correlation_with_exact"]
    assert set(corr) == set(batch.positions) == {"PREV", "END"}
    for name in batch.positions:
        rows = res[res.position == name]
        exact = rows.pivot(index="layer", columns="head", values="exact").to_numpy()
        for layer, head in ((1, 0), (0, 1), (1, 1)):
            with torch.no_grad():
                want = _hand_patch_at(toy, batch, layer, head, batch.positions[name])
            assert exact[layer, head] == pytest.approx(want, abs=1e-4), (name, layer, head)
        score = rows.pivot(index="layer", columns="head", values="score").to_numpy()
        want = _spearman(score, exact)
        assert corr[name] == (None if want is None else pytest.approx(want, abs=1e-9))
    assert corr["PREV"] is None  # no later layer reads PREV's head outputs: exact patching is 0 there
    assert corr["END"] > 0.9
    whole = run_analyzer("attribution_patching", toy, task, compare_exact=True, preset="paper")
    assert isinstance(whole.provenance["choices"]["rank_correlation_with_exact"], float)
    assert whole["exact"].notna().all()


@pytest.mark.smollm2
def test_smollm2_patching_equals_transformer_lens(smol):
    batch = IOITask(n_prompts=2, templates=[0], seed=1).batch(smol)
    engine = PatchEngine(smol, batch.end, batch.logit_diff)
    layers = [1, 27]
    with torch.inference_mode():
        z = patch_all_heads(engine, batch.clean, batch.corrupted, "z", layers=layers).mean()
        idx = pd.DataFrame([(layer, h) for layer in layers for h in range(9)], columns=["layer", "head"])
        tl = _tl(smol, batch, "z", patching.layer_head_vector_patch_setter, idx)
        assert (z[layers, :, 0].reshape(-1) - tl).abs().max() <= 1e-4
        by_pos = patch_all_heads(engine, batch.clean, batch.corrupted, "z", positions="each", layers=[27]).mean()
        some = [0, int(batch.positions["IO"][0]), int(batch.positions["S2"][0]), int(batch.end[0])]
        idx = pd.DataFrame([(27, p, h) for p in some for h in range(9)], columns=["layer", "pos", "head"])
        tl = _tl(smol, batch, "z", patching.layer_pos_head_vector_patch_setter, idx)
        assert (by_pos[27][:, some].T.reshape(-1) - tl).abs().max() <= 1e-4
        for act, n_units in (("q", 9), ("k", 3), ("pattern", 9)):
            ours = patch_all_heads(engine, batch.clean, batch.corrupted, act, layers=[26]).mean()[26, :, 0]
            setter = patching.layer_head_pattern_patch_setter if act == "pattern" else patching.layer_head_vector_patch_setter
            idx = pd.DataFrame([(26, h) for h in range(n_units)], columns=["layer", "head"])
            assert (ours - _tl(smol, batch, act, setter, idx)).abs().max() <= 1e-4, act


@pytest.mark.smollm2
def test_smollm2_ioi_map_attribution_and_dla(smol):
    task = IOITask(n_prompts=6, seed=2)
    scores = run_analyzer("activation_patching", smol, task)
    mat = torch.tensor(scores.matrix().to_numpy())  # (layer, head), normalised
    prov = scores.provenance["choices"]
    assert prov["clean_metric"] > 1.0 and prov["clean_fraction_correct"] >= 0.75
    flat = mat.flatten()
    top = flat.abs().argsort(descending=True)[:5]
    # a small set of late heads carries most of the effect
    assert all(int(i) // smol.n_heads >= smol.n_layers // 2 for i in top)
    assert flat[top].abs().mean() >= 10 * flat.abs().median()
    assert flat.max() > 0.2
    # attribution patching ranks heads like exact patching
    batch = task.batch(smol)
    engine = PatchEngine(smol, batch.end, batch.logit_diff)
    attr = attribution_scores(engine, batch.clean, batch.corrupted)["per_position"].sum(2).mean(1)
    assert rank_correlation(attr, mat) > 0.4
    assert int(attr.flatten().argmax()) == int(flat.argmax())
    # DLA: the frozen-scale formula applied to the whole residual reproduces the logit diff
    dla = direct_logit_attribution_values(smol, batch)
    assert torch.allclose(dla["resid_dla"], dla["logit_diff"], atol=1e-3)
