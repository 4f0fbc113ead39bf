"""Ablations on contrastive tasks equal hand-written hooks; ``headscope ablate`` reports them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from headscope import load_model
from headscope.cli.ablate import ablation_effect
from headscope.cli.app import main
from headscope.tasks.induction_contrast import InductionContrastTask


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction")


def _hand(model, batch, fn_for_layer, heads):
    hooks = [(f"blocks.{layer}.attn.hook_z", fn_for_layer(layer, [h for l2, h in heads if l2 == layer]))
             for layer in sorted({layer for layer, _ in heads})]
    with torch.inference_mode():
        logits = model.bridge.run_with_hooks(batch.clean, fwd_hooks=hooks)
    return batch.full_logits_metric(logits)


def test_ablations_equal_hand_hooks(toy):
    batch = InductionContrastTask(n_prompts=4, seq_len=6).batch(toy)
    batch.groups = ["a", "b", "a", "b"]
    heads = [(1, 0), (0, 1)]
    _, corr = toy.bridge.run_with_cache(batch.corrupted)

    def zero(layer, hs):
        def fn(z, hook):
            z = z.clone()
            z[:, :, hs] = 0
            return z
        return fn

    def mean(layer, hs):
        def fn(z, hook):
            z = z.clone()
            z[:, :, hs] = corr[f"blocks.{layer}.attn.hook_z"][:, :, hs].mean((0, 1))
            return z
        return fn

    def group_mean(layer, hs):
        def fn(z, hook):
            z = z.clone()
            ref = corr[f"blocks.{layer}.attn.hook_z"]
            for g in ("a", "b"):
                rows = torch.tensor([x == g for x in batch.groups])
                z[rows.nonzero()[:, 0][:, None], :, hs] = ref[rows][:, :, hs].mean((0, 1))[None, None]
            return z
        return fn

    def resample(layer, hs):
        def fn(z, hook):
            z = z.clone()
            z[:, :, hs] = corr[f"blocks.{layer}.attn.hook_z"][:, :, hs]
            return z
        return fn

    for kind, hand, kw in (("zero", zero, {}), ("mean", mean, {}), ("mean", group_mean, {"per_template": True}),
                           ("resample", resample, {})):
        out = ablation_effect(toy, batch, heads, kind, **kw)
        assert abs(out["after"] - float(_hand(toy, batch, hand, heads))) <= 1e-4, (kind, kw)
    zero_out = ablation_effect(toy, batch, [(1, 0)], "zero")
    assert zero_out["before"] > 5 and zero_out["after"] < 1  # the planted induction head does the task


def test_ablate_cli_prints_before_and_after(capsys):
    main(["ablate", "--model", "toy-induction", "--task", "induction_contrast", "--heads", "1.0",
          "--kind", "mean", "-o", "n_prompts=3", "-o", "seq_len=5"])
    out = capsys.readouterr().out
    assert "before:" in out and "after:" in out and "change:" in out


def test_ablate_cli_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--model", "toy-induction", "--task", "induction_contrast", "--heads", "7.0"])
    assert exc.value.code == 2
    assert "out of range" in capsys.readouterr().err
