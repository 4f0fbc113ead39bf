"""``device_map`` (accelerate placement) for load_model and the CLI: what can be tested on CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import headscope as hs  # noqa: E402
from headscope.errors import HeadscopeError  # noqa: E402


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """toy-induction saved as a model directory (config.json + safetensors + tokenizer)."""
    from headscope.toy import build_toy

    path = tmp_path_factory.mktemp("toydir")
    hf_model, tok = build_toy("toy-induction")
    hf_model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_device_map_reaches_from_pretrained_and_changes_nothing_on_cpu(toy_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map", "<absent>"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    plain = hs.load_model(str(toy_dir))
    mapped = hs.load_model(str(toy_dir), device_map={"": "cpu"})
    auto = hs.load_model(str(toy_dir), device_map="auto")  # CPU-only machine: everything on the CPU
    assert seen == ["<absent>", {"": "cpu"}, "auto"]
    assert mapped.device == "cpu" and auto.device == "cpu"
    tokens = plain.to_tokens("Monday seven Tuesday nine Monday seven")
    with torch.inference_mode():
        ref = plain.bridge(tokens)
        torch.testing.assert_close(mapped.bridge(tokens), ref)
        torch.testing.assert_close(auto.bridge(tokens.to(auto.device)), ref)
    a = hs.score(plain, task="induction", task_params={"n_prompts": 2, "seq_len": 8})
    b = hs.score(auto, task="induction", task_params={"n_prompts": 2, "seq_len": 8})
    torch.testing.assert_close(torch.tensor(a["score"].to_numpy()), torch.tensor(b["score"].to_numpy()))


def test_toy_models_refuse_device_map():
    with pytest.raises(HeadscopeError, match="not toy models"):
        hs.load_model("toy-induction", device_map="auto")


def test_cli_score_accepts_device_map(toy_dir, tmp_path, capsys):
    from headscope.cli.app import main

    out = tmp_path / "s.parquet"
    main(["score", "--model", str(toy_dir), "--task", "induction", "--device-map", "auto",
          "-o", "n_prompts=2", "-o", "seq_len=8", "--out", str(out)])
    assert hs.read_parquet(out).provenance["model"]["device"] == "cpu"
    with pytest.raises(SystemExit) as info:
        main(["score", "--model", "toy-induction", "--device-map", "auto", "--out", str(tmp_path / "t.parquet")])
    assert info.value.code == 2 and "not toy models" in capsys.readouterr().err
