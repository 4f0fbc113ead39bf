"""The conformance zoo (:mod:`headscope.toy.zoo`): deterministic, offline, and built so that
mistakes show. Every property is read from the saved Hugging Face model itself (config,
weights, eager attention), not through headscope."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import headscope as hs
from headscope.errors import HeadscopeError
from headscope.models.load import offline_status
from headscope.toy.vocab import VOCAB
from headscope.toy.zoo import ZOO_FAMILIES, build_zoo_model, cached_zoo_dir, zoo_names

PROMPT_LEN = 12  # the conformance prompts' length


def _raw(directory):
    return AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager", local_files_only=True).eval()


@pytest.fixture(scope="module")
def zoo_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {f: build_zoo_model(f, root / f) for f in ZOO_FAMILIES}


def test_families_cover_the_issue_list():
    assert set(ZOO_FAMILIES) >= {"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2", "phi3"}
    assert zoo_names() == [f"zoo-{f}" for f in ZOO_FAMILIES]


def test_build_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    state = torch.get_rng_state()
    a = load_file(build_zoo_model("gemma3", tmp_path / "a") / "model.safetensors")
    b = load_file(build_zoo_model("gemma3", tmp_path / "b") / "model.safetensors")
    c = load_file(build_zoo_model("gemma3", tmp_path / "c", seed=1) / "model.safetensors")
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("family", list(ZOO_FAMILIES))
def test_zoo_model_is_tiny_offline_and_far_from_uniform(family, zoo_dirs):
    directory = zoo_dirs[family]
    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert tok("1 2 3")["input_ids"] == [VOCAB["<bos>"], VOCAB["1"], VOCAB["2"], VOCAB["3"]]
    model = _raw(directory)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 500_000, n_params
    assert model.config.vocab_size == len(VOCAB)
    ids = torch.randint(4, len(VOCAB), (2, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(input_ids=ids, output_attentions=True)
    n_keys = torch.arange(1, PROMPT_LEN + 1).float()  # causal keys per query (at most)
    for layer, pat in enumerate(out.attentions):  # (b, H, q, k)
        entropy = -(pat.clamp_min(1e-30).log() * pat).sum(-1)[..., 4:]  # queries with >= 5 keys
        uniform = n_keys[4:].log()
        assert float((entropy / uniform).mean()) < 0.6, f"layer {layer}: attention too close to uniform"
    for name, p in model.named_parameters():
        if "norm" in name or ".ln_" in name:
            if name.endswith("weight"):
                assert not torch.allclose(p, torch.ones_like(p)) and p.std() > 0.1, name


def test_gemma_norms_store_an_offset_far_from_the_multiplier(zoo_dirs):
    for family in ("gemma2", "gemma3"):
        model = _raw(zoo_dirs[family])
        norm = model.model.norm
        x = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            y = norm(x)
        rms = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        torch.testing.assert_close(y, x / rms * (1 + norm.weight), atol=1e-5, rtol=1e-5)  # HF's own offset
        # the stored weight is a poor stand-in for the multiplier 1 + weight
        w = norm.weight.detach()
        assert float(((1 + w) / w.abs().clamp_min(1e-3)).log().abs().median()) > 1.0


def test_windows_layer_types_rotary_bases_and_soft_caps_bite(zoo_dirs):
    for family in ("mistral", "gemma2", "gemma3"):
        assert _raw(zoo_dirs[family]).config.sliding_window < PROMPT_LEN
    for family in ("gemma2", "gemma3"):
        cfg = _raw(zoo_dirs[family]).config
        types = cfg.layer_types
        assert {"sliding_attention", "full_attention"} <= set(types)
        # running blocks start.. as if they were blocks 0.. gives some layer another type: for
        # some start on Gemma-2 (alternating, like the real model), for every start on Gemma-3
        shifted = [any(types[i] != types[i - start] for i in range(start, len(types))) for start in range(1, len(types))]
        assert all(shifted) if family == "gemma3" else any(shifted), (family, types)
    rope = _raw(zoo_dirs["gemma3"]).config.rope_parameters
    assert rope["sliding_attention"]["rope_theta"] * 10 <= rope["full_attention"]["rope_theta"]
    model = _raw(zoo_dirs["gemma2"])
    cap = model.config.final_logit_softcapping
    ids = torch.randint(4, len(VOCAB), (2, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    pre = {}
    handle = model.lm_head.register_forward_hook(lambda m, i, o: pre.setdefault("x", o))
    with torch.inference_mode():
        model(input_ids=ids)
    handle.remove()
    assert float(pre["x"].abs().max()) > cap, "final-logit soft-capping never bites"
    with torch.inference_mode():
        capped = model(input_ids=ids, output_attentions=True).attentions
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        free = model(input_ids=ids, output_attentions=True).attentions
    assert max(float((a - b).abs().max()) for a, b in zip(capped, free, strict=True)) > 0.1, "attention soft-capping never bites"


def test_load_model_zoo_spec_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path))
    model = hs.load_model("zoo-qwen3")
    assert (model.spec, model.source, model.n_layers, model.n_kv_heads) == ("zoo-qwen3", "zoo", 3, 2)
    directory = cached_zoo_dir("qwen3")
    assert directory.parent == tmp_path / "zoo"
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    again = hs.load_model("zoo-qwen3")
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert again.weights_hash == model.weights_hash
    names = {row["name"] for row in offline_status()}
    assert set(zoo_names()) <= names


def test_unknown_zoo_name_suggests():
    with pytest.raises(HeadscopeError, match="zoo-gemma3"):
        hs.load_model("zoo-gema3")
