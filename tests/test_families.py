"""One facts object per architecture family (issue 19, item 5).

The facts headscope reads (``headscope.models.facts.arch_facts``) are checked here against the
Hugging Face modules themselves, read by hand in the test (module names and shapes from each
family's ``modeling_*.py``, a raw forward hook for the embedding scale), not against headscope's
own detection. Every family file must have a zoo model and every zoo model a family file.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import headscope as hs
from headscope.models.config import UnsupportedArchitectureError
from headscope.models.facts import (
    UnverifiedArchitectureWarning,
    arch_facts,
    check_family,
    detect_facts,
)
from headscope.models.families import Family, families, family_for
from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import BOS, EOS, PAD, VOCAB
from headscope.toy.zoo import ZOO_FAMILIES

FAMILIES = list(ZOO_FAMILIES)

# HF module names of each family's decoder layer (modeling_<family>.py), mapped to the bridge's
# block norm names. Llama's ``post_attention_layernorm`` is its pre-MLP norm; Gemma-2/3 and
# OLMo-2 use the same name for the norm on the attention output.
_HF_BLOCK_NORMS = {
    "gpt2": {"ln_1": "ln1", "ln_2": "ln2"},
    "gpt_neox": {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"},
    "gemma2": {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post",
               "pre_feedforward_layernorm": "ln2", "post_feedforward_layernorm": "ln2_post"},
    "olmo2": {"post_attention_layernorm": "ln1_post", "post_feedforward_layernorm": "ln2_post"},
}
_HF_BLOCK_NORMS["gemma3"] = _HF_BLOCK_NORMS["gemma2"]
_LLAMA_LIKE = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"}
_FUSED = ("c_attn", "query_key_value", "qkv_proj")


_RAW: dict[str, torch.nn.Module] = {}


def _hf(model: hs.Model) -> torch.nn.Module:
    """An independent raw HF copy of ``model`` (the bridge rewires the modules of its own copy)."""
    from transformers import AutoModelForCausalLM

    if model.source_dir not in _RAW:
        _RAW[model.source_dir] = AutoModelForCausalLM.from_pretrained(model.source_dir, dtype=torch.float32).eval()
    return _RAW[model.source_dir]


def _hf_layer(model: hs.Model, i: int = 0) -> torch.nn.Module:
    hf = _hf(model)
    body = getattr(hf, "transformer", None) or getattr(hf, "gpt_neox", None) or hf.model
    return (getattr(body, "h", None) or body.layers)[i]


def _hf_attn(layer: torch.nn.Module) -> torch.nn.Module:
    for name in ("attn", "attention", "self_attn"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise AssertionError(f"no attention module in {type(layer).__name__}")


def _hand_facts(family: str, model: hs.Model) -> dict[str, object]:
    """The facts, read by hand from the HF modules and config (no headscope code)."""
    layer = _hf_layer(model)
    attn = _hf_attn(layer)
    names = dict(layer.named_children())
    mapping = _HF_BLOCK_NORMS.get(family, _LLAMA_LIKE)
    order = ("ln1", "ln1_post", "ln2", "ln2_post")
    block_norms = tuple(sorted((mapping[n] for n in names if n in mapping), key=order.index))
    final = getattr(getattr(_hf(model), "transformer", None), "ln_f", None) or getattr(
        getattr(_hf(model), "gpt_neox", None), "final_layer_norm", None) or _hf(model).model.norm
    if isinstance(final, torch.nn.LayerNorm):
        norm = "LayerNorm"
    else:  # Gemma's RMSNorm: forward returns x_normed * (1 + weight); a zero weight then leaves x_normed
        x = torch.randn(3, model.d_model)
        with torch.no_grad():
            saved = final.weight.clone()
            final.weight.zero_()
            out = final(x)
            final.weight.copy_(saved)
        rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        norm = "RMSNorm, 1 + weight" if torch.allclose(out, rms, atol=1e-4) else "RMSNorm"
    q_norm = getattr(attn, "q_norm", None)
    qk_norm = None if q_norm is None else ("per_head" if q_norm.weight.numel() == model.d_head else "all_heads")
    cfg = _hf(model).config
    types = list(getattr(cfg, "layer_types", None) or [])
    if not types:
        types = ["sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"] * model.n_layers
    kinds = set(types)
    return {
        "block_norms": block_norms, "norm": norm, "qk_norm": qk_norm,
        "parallel_residual": bool(getattr(cfg, "use_parallel_residual", False)),
        "fused_qkv": any(hasattr(attn, n) for n in _FUSED),
        "positions": "learned" if hasattr(getattr(_hf(model), "transformer", None), "wpe") else "rotary",
        "attention_layers": "global" if kinds == {"full_attention"} else ("sliding" if kinds == {"sliding_attention"} else "mixed"),
        "final_logit_softcap": getattr(cfg, "final_logit_softcapping", None),
        "attention_softcap": getattr(cfg, "attn_logit_softcapping", None),
    }


def _raw_embedding_scale(model: hs.Model) -> float:
    """What a token's embedding row is multiplied by on its way into decoder layer 0 (raw HF hook)."""
    seen: list[torch.Tensor] = []
    layer = _hf_layer(model)
    handle = layer.register_forward_pre_hook(lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            _hf(model)(torch.tensor([[1], [2]]))
    finally:
        handle.remove()
    w_e = _hf(model).get_input_embeddings().weight.detach()
    de, dr = w_e[1] - w_e[2], seen[0][0, 0] - seen[0][1, 0]
    return float(dr @ de / (de @ de))


def test_family_files_and_zoo_agree() -> None:
    """Every family file has a zoo model, every zoo model a family file (found by walking the package)."""
    assert set(families()) == set(ZOO_FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_facts_equal_the_hf_modules(family: str) -> None:
    model = hs.load_model(f"zoo-{family}")
    facts = arch_facts(model)
    assert facts.family == family and facts.verified
    assert facts.architecture == type(_hf(model)).__name__ == type(model.bridge.original_model).__name__
    hand = _hand_facts(family, model)
    got = {k: getattr(facts, k) for k in hand}
    assert got == hand
    # the family file's declaration agrees with the model (else arch_facts would have refused)
    for name, value in families()[family].declared().items():
        assert hand.get(name, getattr(facts, name)) == value, name


@pytest.mark.parametrize("family", FAMILIES)
def test_scaled_embedding_declaration_matches_raw_hf(family: str) -> None:
    model = hs.load_model(f"zoo-{family}")
    want = math.sqrt(model.d_model) if families()[family].scaled_embedding else 1.0
    assert _raw_embedding_scale(model) == pytest.approx(want, rel=1e-4)


def test_a_contradicting_family_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose structure differs from its family file is refused, one line naming it."""
    model = hs.load_model("zoo-llama")
    facts = detect_facts(model)
    wrong = Family(name="llama", model_types=("llama",), norm="RMSNorm", parallel_residual=True)
    with pytest.raises(UnsupportedArchitectureError, match=r"^LlamaForCausalLM: parallel_residual is False") as err:
        check_family(facts, wrong)
    assert "\n" not in str(err.value)
    # and at load time: a wrong declaration stops before any number is made
    import headscope.models.families as fam

    monkeypatch.setitem(fam._FAMILIES, "llama", Family(name="llama", model_types=("llama",), block_norms=("ln1",)))
    with pytest.raises(UnsupportedArchitectureError, match="block_norms"):
        hs.load_model("zoo-llama")


def _tiny_phi(tmp_path) -> str:
    """A seeded random Phi (``PhiForCausalLM``: attention and MLP in parallel, no config flag for it)."""
    from transformers import AutoModelForCausalLM, PhiConfig

    cfg = PhiConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, bos_token_id=VOCAB[BOS],
                    eos_token_id=VOCAB[EOS], pad_token_id=VOCAB[PAD])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    build_tokenizer("tiny-phi").save_pretrained(tmp_path)
    return str(tmp_path)


def test_a_family_without_a_file_is_read_but_unverified(tmp_path) -> None:
    assert family_for("phi") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = hs.load_model(_tiny_phi(tmp_path))
    facts = arch_facts(model)
    assert facts.family is None and not facts.verified
    assert any(issubclass(w.category, UnverifiedArchitectureWarning) for w in caught)
    # PhiDecoderLayer.forward: attn_outputs + feed_forward_hidden_states + residual, both from one ln
    layer = _hf_layer(model)
    assert hasattr(layer, "input_layernorm") and not hasattr(layer, "post_attention_layernorm")
    assert facts.parallel_residual
    assert model.provenance()["arch_family"] is None


def test_cli_prints_the_unverified_warning_as_one_line(tmp_path) -> None:
    import os
    import subprocess
    import sys

    directory = _tiny_phi(tmp_path / "phi")
    proc = subprocess.run(
        [sys.executable, "-m", "headscope", "score", "-m", directory, "-t", "induction", "-a", "pattern_scores",
         "-o", "n_prompts=2", "-o", "seq_len=5", "--out", str(tmp_path / "out.parquet")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "family file" in ln]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: PhiForCausalLM (model_type 'phi') has no headscope family file")
    assert "UnverifiedArchitectureWarning" not in proc.stderr
