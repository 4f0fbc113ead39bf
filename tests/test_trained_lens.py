"""Trained per-head lenses: init equals the training-free lens, checkpoints/resume, safetensors, CLI, SmolLM2 KL."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import headscope
from headscope.errors import HeadscopeError
from headscope.lens.core import final_logits, head_vectors, lens_logits
from headscope.lens.store import HeadLens, load_lens, read_lens_file
from headscope.lens.train import collect, constant_kl, heldout_kl, train_lens
from headscope.tasks import make_task

HEADS = [(1, 1), (0, 0)]


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-copying")


@pytest.fixture(scope="module")
def toy_data(toy):
    task = make_task("corpus", seq_len=24, n_train=6, n_eval=3)
    return collect(toy, task.windows(toy, "train"), HEADS), collect(toy, task.windows(toy, "eval"), HEADS)


@pytest.mark.parametrize("param", ["factored", "full"])
def test_untrained_lens_equals_training_free_lens(toy, param):
    """At init the factored lens is the training-free lens; the full lens adds the fold_ln b_U
    (b_U + final-norm bias @ W_U, read from the HF modules here), as the paper's lens does."""
    tokens = toy.to_tokens("one two three four")
    vecs, scale = head_vectors(toy, tokens, HEADS)
    lens = HeadLens(toy, HEADS, param)
    want = lens_logits(toy, vecs[0], scale[0], "residual")
    if param == "full":
        hf = toy.bridge.original_model
        w_u = hf.lm_head.weight.detach().T
        b_u = hf.transformer.ln_f.bias.detach() @ w_u
        if hf.lm_head.bias is not None:
            b_u = b_u + hf.lm_head.bias.detach()
        want = want + b_u
    assert torch.allclose(lens.logits(vecs[0], scale[0]), want, atol=1e-5)


def test_resume_reproduces_uninterrupted_run(toy, toy_data, tmp_path):
    train, _ = toy_data
    straight, _ = train_lens(toy, HEADS, train, steps=8, lr=1e-2, batch_tokens=16)
    first, _ = train_lens(toy, HEADS, train, steps=4, lr=1e-2, batch_tokens=16, checkpoint_dir=tmp_path, checkpoint_every=4)
    assert (tmp_path / "lens-step4.safetensors").is_file()
    resumed, losses = train_lens(toy, HEADS, train, steps=8, lr=1e-2, batch_tokens=16, checkpoint_dir=tmp_path,
                                 checkpoint_every=4, resume=True)
    assert len(losses) == 4
    for name, p in straight.params.items():
        assert torch.allclose(p, resumed.params[name], atol=1e-6), name
    with pytest.raises(HeadscopeError, match="resume"):
        train_lens(toy, [(1, 0)], train, steps=8, checkpoint_dir=tmp_path, resume=True)


def test_constant_baseline_is_a_bias_only_lens(toy, toy_data):
    """A lens that ignores its head (A = 0, c = 0) with bias log(mean training p_model) scores
    exactly the best-constant KL."""
    train, held = toy_data
    with torch.inference_mode():
        mean_p = final_logits(toy, train.teacher).float().softmax(-1).mean(0)
    lens = HeadLens(toy, HEADS, "factored")
    with torch.no_grad():
        for name, p in lens.params.items():
            p.zero_()
            if name.endswith("_b"):
                p.copy_(mean_p.clamp_min(1e-30).log())
    base = constant_kl(toy, train, held)
    for key, kls in heldout_kl(toy, lens, held).items():
        assert kls["trained"] == pytest.approx(base, rel=1e-4), key


def test_safetensors_round_trip(toy, toy_data, tmp_path):
    train, held = toy_data
    lens, _ = train_lens(toy, HEADS, train, steps=5, lr=1e-2, batch_tokens=16)
    path = lens.save(tmp_path / "lens.safetensors", extra_meta={"note": "x"})
    tensors, meta = read_lens_file(path)
    assert meta["heads"] == "1.1,0.0" and meta["param"] == "factored" and meta["note"] == "x"
    assert meta["weights_sha256"] == toy.weights_hash
    again = load_lens(toy, path)
    kl_a, kl_b = heldout_kl(toy, lens, held), heldout_kl(toy, again, held)
    for key in kl_a:
        assert kl_a[key] == pytest.approx(kl_b[key])
    with pytest.raises(HeadscopeError, match="trained on"):
        load_lens(headscope.load_model("toy-successor"), path)


def test_cli_train_then_decode(tmp_path, capsys):
    from headscope.cli.app import main
    from headscope.results import read_parquet

    out, scores = tmp_path / "l.safetensors", tmp_path / "kl.parquet"
    main(["lens", "train", "--model", "toy-copying", "--heads", "1.1", "--steps", "3", "--seq-len", "16", "--n-train", "4",
          "--n-eval", "2", "--batch-tokens", "8", "--out", str(out), "--scores", str(scores)])
    assert "held-out KL" in capsys.readouterr().out
    assert set(read_parquet(scores).metrics) == {"heldout_kl_trained", "heldout_kl_free", "kl_gain", "heldout_kl_constant"}
    main(["lens", "decode", "--model", "toy-copying", "--heads", "1.1", "--prompt", "one two three", "--lens", str(out)])
    assert "trained_lens" in capsys.readouterr().out


@pytest.mark.smollm2
def test_smollm2_trained_lens_beats_training_free_on_heldout():
    model = headscope.load_model("smollm2-135m")
    from headscope.analyzers import run_analyzer

    task = make_task("corpus", seq_len=32, n_train=6, n_eval=3)
    scores = run_analyzer("trained_lens", model, task, heads="18.6,23.2", steps=40, lr=1e-2, batch_tokens=32)
    trained = scores.matrix("heldout_kl_trained")
    free = scores.matrix("heldout_kl_free")
    for layer, head in [(18, 6), (23, 2)]:
        assert trained.loc[layer, head] < free.loc[layer, head] - 0.5
    print("held-out KL", {f"{a}.{b}": (free.loc[a, b], trained.loc[a, b]) for a, b in [(18, 6), (23, 2)]})
