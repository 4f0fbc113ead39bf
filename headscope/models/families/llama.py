"""Llama (``LlamaForCausalLM``, also SmolLM2): RMSNorm, RoPE, SwiGLU, grouped-query attention."""

from headscope.models.families import Family

FAMILY = Family(
    name="llama", model_types=("llama",),
    norm="RMSNorm", block_norms=("ln1", "ln2"),
)
