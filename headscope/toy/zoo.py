"""The architecture conformance zoo: tiny seeded random-weight models, one per HF family.

Each family is built from its ``transformers`` config class, given random weights from a local
``torch.Generator`` (the global RNG is never touched), and saved with ``save_pretrained``
next to the shared word-level toy tokenizer, so ``headscope.load_model(str(directory))`` and
``AutoModelForCausalLM.from_pretrained(directory)`` both load it offline.
``headscope.load_model("zoo-<family>")`` builds it once into the headscope cache.

The models exist to check headscope's numbers against an independent raw Hugging Face
computation on every architecture (``tests/conformance/``). They have no mechanism; their
weights are scaled so that mistakes show:

* q/k projections (the whole fused projection where q, k and v share one) and q/k norms are
  scaled up, so attention patterns are far from uniform (mean entropy under 0.6 of uniform);
* every norm weight is random (log-normal around 1), never 1. Gemma stores its RMSNorm weight
  as an offset and multiplies by ``1 + weight``: the stored offset is ``m - 1`` for a random
  multiplier ``m``, so code that reads ``weight`` as the multiplier is far off;
* biases are random (not zero) where the family has them; the unembedding (and a tied
  embedding) is scaled so that logits have a standard deviation of about 2;
* Gemma-2's attention and final-logit soft-caps are small enough to bite;
* sliding windows (Mistral, Gemma-2/3) are 4 tokens, shorter than the test prompts;
* Gemma-2/3 have 4 layers, and for every ``start`` in 1..3 some layer ``i >= start`` has
  another type than layer ``i - start`` (so code that runs blocks ``start..`` as if they were
  blocks ``0..`` gives some layer the wrong mask or rotary base); Gemma-3's two layer types
  have very different rotary bases (100 and 10000).

Shapes: d_model 64, 4 query heads of d_head 16 (2 KV heads where the family has GQA),
3 layers (Gemma-2/3: 4), MLP width 128, the 132-token toy vocabulary, 64 positions.
Building and saving one family takes well under a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import BOS, EOS, PAD, VOCAB

__all__ = ["N_CTX", "ZOO_FAMILIES", "ZooFamily", "build_zoo_hf", "build_zoo_model", "cached_zoo_dir", "zoo_names"]

N_CTX = 64
D_MODEL = 64
N_HEADS = 4
N_KV_HEADS = 2
D_HEAD = 16
D_MLP = 128
SLIDING_WINDOW = 4
QK_GAIN = 2.0
"""Scale of q/k projection weights (times ``fan_in ** -0.5``): peaked attention."""
QK_NORM_GAIN = 1.5
"""Extra factor on q_norm / k_norm multipliers (QK-norm families): peaked attention."""
UNEMBED_GAIN = 2.0
"""Scale of the unembedding, so that final-logit soft-capping bites."""


@dataclass(frozen=True)
class ZooFamily:
    """One architecture family of the zoo.

    Attributes:
        name: family key (``"gemma2"``); the model spec is ``"zoo-<name>"``.
        summary: what the family exercises, one line.
        config: the ``transformers`` config class name.
        kwargs: config arguments beyond the shared tokens/vocabulary ones.
        offset_norms: RMSNorm multiplies by ``1 + weight`` (Gemma).
    """

    name: str
    summary: str
    config: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    offset_norms: bool = False

    @property
    def spec(self) -> str:
        return f"zoo-{self.name}"


_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_GQA = {"num_attention_heads": N_HEADS, "num_key_value_heads": N_KV_HEADS, "head_dim": D_HEAD}
_SIZES = {
    "hidden_size": D_MODEL,
    "intermediate_size": D_MLP,
    "num_hidden_layers": 3,
    "max_position_embeddings": N_CTX,
}

ZOO_FAMILIES: dict[str, ZooFamily] = {
    f.name: f
    for f in (
        ZooFamily(
            "gpt2", "GPT-2: LayerNorm, learned positions, fused c_attn (Conv1D), biases", "GPT2Config",
            {"n_embd": D_MODEL, "n_layer": 3, "n_head": N_HEADS, "n_inner": D_MLP, "n_positions": N_CTX,
             "tie_word_embeddings": False},
        ),
        ZooFamily(
            "gpt_neox", "GPT-NeoX: parallel residual, partial rotary (25%), fused query_key_value",
            "GPTNeoXConfig",
            {**_SIZES, "num_attention_heads": N_HEADS, "use_parallel_residual": True,
             "rope_parameters": {**_ROPE, "partial_rotary_factor": 0.25}, "tie_word_embeddings": False},
        ),
        ZooFamily(
            "llama", "Llama: RMSNorm, RoPE, SwiGLU, grouped-query attention (4 query / 2 KV heads)",
            "LlamaConfig", {**_SIZES, **_GQA, "rope_parameters": dict(_ROPE), "tie_word_embeddings": False},
        ),
        ZooFamily(
            "mistral", f"Mistral: GQA with a {SLIDING_WINDOW}-token sliding window on every layer",
            "MistralConfig",
            {**_SIZES, **_GQA, "sliding_window": SLIDING_WINDOW, "rope_parameters": dict(_ROPE),
             "tie_word_embeddings": False},
        ),
        ZooFamily(
            "qwen2", "Qwen2: GQA with q/k/v biases, tied embeddings", "Qwen2Config",
            {**_SIZES, **_GQA, "rope_parameters": dict(_ROPE), "tie_word_embeddings": True},
        ),
        ZooFamily(
            "qwen3", "Qwen3: per-head QK-norm (RMSNorm on q and k before RoPE), GQA", "Qwen3Config",
            {**_SIZES, **_GQA, "rope_parameters": dict(_ROPE), "tie_word_embeddings": False},
        ),
        ZooFamily(
            "gemma2",
            f"Gemma-2: alternating {SLIDING_WINDOW}-token sliding / global layers, attention and final-logit "
            "soft-capping, sandwich norms, (1 + weight) RMSNorm, scaled embeddings",
            "Gemma2Config",
            {**_SIZES, **_GQA, "num_hidden_layers": 4, "sliding_window": SLIDING_WINDOW,
             "layer_types": ["sliding_attention", "full_attention"] * 2,
             "query_pre_attn_scalar": D_HEAD, "attn_logit_softcapping": 4.0,
             "final_logit_softcapping": 3.0, "rope_parameters": dict(_ROPE)},
            offset_norms=True,
        ),
        ZooFamily(
            "gemma3",
            f"Gemma-3: layer_types with {SLIDING_WINDOW}-token sliding and global layers, rotary base 100 "
            "(sliding) vs 10000 (global), QK-norm, sandwich norms, (1 + weight) RMSNorm",
            "Gemma3TextConfig",
            {**_SIZES, **_GQA, "num_hidden_layers": 4, "sliding_window": SLIDING_WINDOW,
             "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "full_attention"],
             "query_pre_attn_scalar": D_HEAD,
             "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                 "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
            offset_norms=True,
        ),
        ZooFamily(
            "olmo2", "OLMo-2: post-norm blocks (norms on the sublayer outputs), QK-norm over all heads, GQA",
            "Olmo2Config", {**_SIZES, **_GQA, "rope_parameters": dict(_ROPE), "tie_word_embeddings": False},
        ),
        ZooFamily(
            "phi3", "Phi-3: fused qkv_proj and gate_up_proj, partial rotary (50%), GQA", "Phi3Config",
            {**_SIZES, "num_attention_heads": N_HEADS, "num_key_value_heads": N_KV_HEADS,
             "original_max_position_embeddings": N_CTX,
             "rope_parameters": {**_ROPE, "partial_rotary_factor": 0.5}, "tie_word_embeddings": False},
        ),
    )
}
"""Family name -> :class:`ZooFamily`, in the order of the support matrix."""


def zoo_names() -> list[str]:
    """The model specs of the zoo (``zoo-gpt2``, ...)."""
    return [f.spec for f in ZOO_FAMILIES.values()]


def family_seed(family: str, seed: int) -> int:
    """The generator seed of ``family``'s weights: stable across runs and machines."""
    return zlib.crc32(f"{family}:{seed}".encode())


_QK_PROJ = ("q_proj", "k_proj", "c_attn", "query_key_value", "qkv_proj")
_UNEMBED = ("lm_head",)
_EMBED = ("embed_tokens", "wte", "wpe", "embed_in")


def _is_norm(name: str) -> bool:
    parts = name.split(".")
    return any("norm" in p or p.startswith("ln_") for p in parts[:-1])


def _randomise(model: torch.nn.Module, gen: torch.Generator, offset_norms: bool) -> None:
    """Draw every parameter from ``gen``, in name order (see the module docstring)."""

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is model.get_input_embeddings().weight

    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if _is_norm(name) and name.endswith("weight"):
                mult = torch.exp(0.4 * randn(param.shape))
                if "q_norm" in name or "k_norm" in name:
                    mult = mult * QK_NORM_GAIN
                param.copy_(mult - 1.0 if offset_norms else mult)
            elif name.endswith("bias"):
                param.copy_(0.2 * randn(param.shape))
            elif any(key in name for key in _EMBED):  # tied: scaled as an unembedding
                param.copy_(randn(param.shape) * (UNEMBED_GAIN * param.shape[-1] ** -0.5 if tied else 1.0))
            else:
                gain = QK_GAIN if any(k in name for k in _QK_PROJ) else UNEMBED_GAIN if any(k in name for k in _UNEMBED) else 1.0
                # nn.Linear is (out, in); GPT-2's Conv1D is (in, out)
                fan_in = param.shape[0] if "transformer.h." in name else param.shape[-1]
                param.copy_(randn(param.shape) * gain * fan_in**-0.5)


def build_zoo_hf(family: str, seed: int = 0) -> tuple[Any, Any]:
    """Build ``family``'s HF model (float32, eval mode) and tokenizer in memory.

    Raises:
        KeyError: unknown family (the message lists the families).
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if family not in ZOO_FAMILIES:
        raise KeyError(f"unknown zoo family {family!r}: choose from {', '.join(ZOO_FAMILIES)}")
    spec = ZOO_FAMILIES[family]
    config_cls: Callable[..., Any] = getattr(transformers, spec.config)
    config = config_cls(
        vocab_size=len(VOCAB), bos_token_id=VOCAB[BOS], eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD], **spec.kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # HF's default init, immediately overwritten below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise(model, torch.Generator().manual_seed(family_seed(family, seed)), spec.offset_norms)
    model.config.name_or_path = spec.spec
    return model.eval(), build_tokenizer(spec.spec)


def build_zoo_model(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Build ``family`` with weights from ``seed`` and save model + tokenizer to ``directory``.

    Returns:
        ``directory`` (created if needed), loadable with ``headscope.load_model(str(directory))``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_zoo_hf(family, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cached_zoo_dir(family: str, seed: int = 0) -> Path:
    """``family``'s saved model in the headscope cache, built on first use.

    The directory is keyed by family, seed, the installed transformers version and a hash of
    this module's source (a changed recipe gets a fresh build); it is written to a temporary
    directory first and renamed, so concurrent builders never see half a model.
    """
    import transformers

    from headscope.cache import cache_root

    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    target = cache_root() / "zoo" / f"{family}-seed{seed}-tf{transformers.__version__}-{recipe}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=target.parent))
    try:
        build_zoo_model(family, tmp, seed)
        os.replace(tmp, target)
    except OSError:  # another process renamed its build first
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
