"""Phi-3 (``Phi3ForCausalLM``): fused ``qkv_proj`` and ``gate_up_proj``, partial rotary, GQA.

``sliding_window`` is a config option (set in some Phi-3 checkpoints), read from each checkpoint.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="phi3", model_types=("phi3",),
    norm="RMSNorm", block_norms=("ln1", "ln2"), fused_qkv=True, attention_layers=None,
)
