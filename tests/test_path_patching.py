"""Path patching (Wang et al. 2022, App. B) against hand-written hooks and a planted circuit."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from headscope import load_model
from headscope.patching import PatchEngine, Receivers, path_patch
from headscope.tasks.induction_contrast import InductionContrastTask


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction")


def _caches(model, batch):
    _, clean = model.bridge.run_with_cache(batch.clean)
    _, corr = model.bridge.run_with_cache(batch.corrupted)
    return clean, corr


def _hand_path_patch(model, batch, caches, sender, receiver_layer, receiver_act, receiver_unit):
    """Algorithm 1 written out with plain hooks and full forwards, for one sender."""
    bridge = model.bridge
    clean, corr = caches
    ls, hs = sender

    def freeze(layer):
        def fn(z, hook):
            new = clean[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == ls:
                new[:, :, hs] = corr[f"blocks.{layer}.attn.hook_z"][:, :, hs]
            return new

        return fn

    got = {}

    def grab(x, hook):
        got["x"] = x.clone()

    hooks = [(f"blocks.{layer}.attn.hook_z", freeze(layer)) for layer in range(model.n_layers)]
    if receiver_act == "resid":
        logits = bridge.run_with_hooks(batch.clean, fwd_hooks=hooks)
        return batch.full_logits_metric(logits)
    bridge.run_with_hooks(batch.clean, fwd_hooks=hooks + [(f"blocks.{receiver_layer}.attn.hook_{receiver_act}", grab)])

    def put(x, hook):
        x = x.clone()
        x[:, :, receiver_unit] = got["x"][:, :, receiver_unit]
        return x

    logits = bridge.run_with_hooks(batch.clean, fwd_hooks=[(f"blocks.{receiver_layer}.attn.hook_{receiver_act}", put)])
    return batch.full_logits_metric(logits)


def test_toy_induction_path_equals_hand_computation(toy):
    batch = InductionContrastTask(n_prompts=4, seq_len=6, seed=1).batch(toy)
    engine = PatchEngine(toy, batch.end, batch.logit_diff)
    with torch.inference_mode():
        caches = _caches(toy, batch)
        for act in ("k", "q", "v"):
            res = path_patch(engine, batch.clean, batch.corrupted, Receivers(act, ((1, 0),)))
            for h in range(2):
                hand = _hand_path_patch(toy, batch, caches, (0, h), 1, act, 0)
                assert abs(float(res.values[0, h].mean()) - float(hand)) <= 1e-4
            assert torch.isnan(res.values[1]).all()  # layer-1 senders cannot reach layer-1 receivers
            norm = res.normalized()
            if act == "k":  # planted: previous-token head 0.0 -> induction head 1.0's keys carries the effect
                assert norm[0, 0] < -0.9 and abs(float(norm[0, 1])) < 0.05
            else:
                assert norm[0].abs().max() < 0.05
        resid = path_patch(engine, batch.clean, batch.corrupted, Receivers())
        for layer in range(2):
            for h in range(2):
                hand = _hand_path_patch(toy, batch, caches, (layer, h), None, "resid", None)
                assert abs(float(resid.values[layer, h].mean()) - float(hand)) <= 1e-4
        # 0.0 writes only the 'prev' subspace, which the unembedding does not read: no direct path
        assert abs(float(resid.normalized()[0, 0])) < 0.05
        assert resid.normalized()[1, 0] < -0.9


@pytest.mark.smollm2
def test_smollm2_path_patching_equals_hand_hooks():
    from headscope.tasks.ioi import IOITask

    smol = load_model("smollm2-135m")
    batch = IOITask(n_prompts=2, templates=[0]).batch(smol)
    engine = PatchEngine(smol, batch.end, batch.logit_diff)
    with torch.inference_mode():
        caches = _caches(smol, batch)
        res = path_patch(engine, batch.clean, batch.corrupted, Receivers("q", ((28, 4),)), sender_layers=[26])
        for h in (5,):
            hand = _hand_path_patch(smol, batch, caches, (26, h), 28, "q", 4)
            assert abs(float(res.values[26, h].mean()) - float(hand)) <= 1e-4
        k = path_patch(engine, batch.clean, batch.corrupted, Receivers("k", ((28, 4),)), sender_layers=[27])
        hand = _hand_path_patch(smol, batch, caches, (27, 2), 28, "k", smol.kv_head(4))
        assert abs(float(k.values[27, 2].mean()) - float(hand)) <= 1e-4


def test_gqa_kv_receivers_name_the_whole_group_and_positions_are_checked():
    """Under GQA a k receiver is a KV head: the result says which query heads it changes."""
    from headscope.analyzers.registry import run_analyzer
    from headscope.errors import HeadscopeError
    from headscope.tasks import make_task

    model = load_model("toy-gqa")
    task = make_task("induction_contrast", n_prompts=4, seq_len=12)
    got = run_analyzer("path_patching", model, task, receivers="1.1:k", preset="paper")
    choices = got.provenance["choices"]
    assert model.kv_groups()[model.kv_head(1)] == [0, 1]
    assert choices["receiver_query_heads_affected"] == ["1.0", "1.1"]
    assert "whole KV group" in choices["gqa_kv"]
    assert choices["receiver_positions"] == "END of each row" and got.provenance["preset"] == "paper"
    with pytest.raises(HeadscopeError, match="unknown receiver position 'ENDD'.*Did you mean 'END'"):
        run_analyzer("path_patching", model, task, receivers="1.1:q", receiver_positions="ENDD")
