"""Qwen3 (``Qwen3ForCausalLM``): per-head QK-norm (``q_norm``/``k_norm`` on each head before RoPE), GQA."""

from headscope.models.families import Family

FAMILY = Family(
    name="qwen3", model_types=("qwen3",),
    norm="RMSNorm", block_norms=("ln1", "ln2"), qk_norm="per_head", attention_layers=None,
)
