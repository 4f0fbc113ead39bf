"""Gemma-3 text (``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``; ``gemma3`` for the multimodal wrapper's text config).

``config.layer_types`` with sliding and global layers, a rotary base per layer type
(``rope_local_base_freq`` / ``rope_parameters``), per-head QK-norm, sandwich norms,
``(1 + weight)`` RMSNorm and scaled embeddings. Soft-capping is a config option (off in the
released checkpoints), so it is read from each checkpoint.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="gemma3", model_types=("gemma3_text", "gemma3"),
    norm="RMSNorm, 1 + weight", block_norms=("ln1", "ln1_post", "ln2", "ln2_post"), qk_norm="per_head",
    attention_layers="mixed", softcapping=None, scaled_embedding=True,
)
