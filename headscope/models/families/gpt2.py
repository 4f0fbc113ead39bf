"""GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, fused ``c_attn`` (Conv1D), biases."""

from headscope.models.families import Family

FAMILY = Family(
    name="gpt2", model_types=("gpt2",),
    norm="LayerNorm", block_norms=("ln1", "ln2"), fused_qkv=True, positions="learned",
)
