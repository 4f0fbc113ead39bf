"""Model resolution: toys, local dirs, GGUF, hub ids offline, and user-error messages."""

from __future__ import annotations

import time

import pytest
import torch

import headscope as hs
from headscope.errors import HeadscopeError


def test_toy_gqa_shape_facts(toy_gqa) -> None:
    m = toy_gqa
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.group_size) == (2, 4, 2, 2)
    assert m.kv_groups() == {0: [0, 1], 1: [2, 3]}
    assert [m.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    assert m.source == "toy" and m.model_id.startswith("toy-gqa@sha256:")
    assert not m.bridge.training


def test_head_parsing_and_range_errors(toy_gqa) -> None:
    assert toy_gqa.parse_heads("1.3, 0.0") == [(1, 3), (0, 0)]
    with pytest.raises(HeadscopeError, match="out of range.*0..3"):
        toy_gqa.parse_heads("1.4")
    with pytest.raises(HeadscopeError, match="layer 2 is out of range"):
        toy_gqa.check_head(2, 0)
    with pytest.raises(HeadscopeError, match="LAYER.HEAD"):
        toy_gqa.parse_heads("1-3")
    with pytest.raises(HeadscopeError, match="context"):
        toy_gqa.check_length(toy_gqa.n_ctx + 1)


def test_single_token_error_names_fix(smollm2) -> None:
    assert isinstance(smollm2.single_token(" Paris"), int)
    with pytest.raises(HeadscopeError, match="not one: choose a single-token answer"):
        smollm2.single_token(" antidisestablishmentarianism")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("toy-inductoin", "Did you mean 'toy-induction'"),
        ("./no/such/dir", "no such file or directory"),
        ("missing.gguf", "no such file or directory"),
        ("smolm2-135m", "Did you mean 'smollm2-135m'"),
        ("some org/bad id!", "not a model alias"),
    ],
)
def test_resolver_errors(spec: str, message: str) -> None:
    with pytest.raises(HeadscopeError, match=message):
        hs.load_model(spec)


def test_hub_id_offline_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(HeadscopeError, match="not available offline.*huggingface-cli download"):
        hs.load_model("EleutherAI/pythia-70m")
    assert time.perf_counter() - start < 5.0


def test_non_gguf_file_and_dir_without_config(tmp_path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(HeadscopeError, match="not a .gguf"):
        hs.load_model(str(f))
    with pytest.raises(HeadscopeError, match="no config.json"):
        hs.load_model(str(tmp_path))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF-but-truncated")
    with pytest.raises(HeadscopeError, match="cannot read GGUF"):
        hs.load_model(str(broken))


def test_local_directory_matches_in_memory_model(tmp_path, toy_gqa) -> None:
    from headscope.toy import build_toy

    fresh, tok = build_toy("toy-gqa")  # the bridge rewrites its HF model in place; save a fresh one
    fresh.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = hs.load_model(str(tmp_path))
    assert loaded.source == "dir" and len(loaded.weights_hash) == 64
    tokens = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        a = toy_gqa.bridge(tokens)
        b = loaded.bridge(tokens)
    torch.testing.assert_close(a, b)
    assert hs.load_model(str(tmp_path)).weights_hash == loaded.weights_hash


@pytest.mark.smollm2
def test_smollm2_through_gguf_cache(smollm2) -> None:
    from headscope.models.aliases import ALIASES
    from headscope.models.cache import cache_root, file_sha256

    gguf = ALIASES["smollm2-135m"].find_local()
    assert gguf is not None and gguf.suffix == ".gguf"
    assert smollm2.source == "gguf" and smollm2.weights_hash == file_sha256(gguf)
    cached = cache_root() / "gguf" / smollm2.weights_hash
    assert (cached / "model.safetensors").exists() and (cached / "config.json").exists()
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads, smollm2.d_head) == (30, 9, 3, 64)
    # behaviour that breaks if dequantization or loading went wrong
    tokens = smollm2.to_tokens("The capital of France is")
    with torch.no_grad():
        logits = smollm2.bridge(tokens)[0, -1]
    assert smollm2.tokenizer.decode([int(logits.argmax())]).strip() == "Paris"
