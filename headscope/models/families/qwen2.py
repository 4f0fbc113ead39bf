"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): GQA with q/k/v biases, tied embeddings.

``use_sliding_window`` and ``layer_types`` are config switches (off in released checkpoints),
so the attention layers are read from each checkpoint.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="qwen2", model_types=("qwen2",),
    norm="RMSNorm", block_norms=("ln1", "ln2"), attention_layers=None,
)
