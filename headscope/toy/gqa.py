"""``toy-gqa``: a tiny, seeded-random ``LlamaForCausalLM`` with grouped-query attention.

No mechanism is planted (``planted = {}``); the model exists to test GQA plumbing.

* 2 layers, hidden size 32, 4 query heads of ``head_dim`` 8, **2 key/value heads**: query heads
  0 and 1 share KV head 0, query heads 2 and 3 share KV head 1 (HF's ``repeat_kv`` order);
* RMSNorm (eps 1e-6), SwiGLU MLP of width 64, rotary positions, 128 positions;
* the shared 132-token vocabulary and word-level tokenizer of the other toys; untied
  embedding and unembedding.

Weights are drawn from a ``torch.Generator`` seeded with 0, parameter by parameter in name
order, so every build is identical and the global RNG is untouched: embeddings N(0, 1),
linear weights N(0, 1 / fan_in) (std ``fan_in ** -0.5``, so attention patterns are not
trivially uniform), RMSNorm weights 1.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import BOS, EOS, PAD, VOCAB

__all__ = ["NAME", "N_CTX", "PLANTED", "build_gqa"]

NAME = "toy-gqa"
N_CTX = 128
PLANTED: dict[str, tuple[tuple[int, int], ...]] = {}
SEED = 0


def build_gqa() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build ``toy-gqa``: the seeded-random GQA Llama described in the module docstring.

    Returns:
        ``(model, tokenizer)``; the model is float32 and in eval mode.
    """
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=N_CTX,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        bos_token_id=VOCAB[BOS],
        eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        architectures=["LlamaForCausalLM"],
    )
    config.name_or_path = NAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif "embed_tokens" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) * fan_in**-0.5)
    return model.to(torch.float32).eval(), build_tokenizer(NAME)
