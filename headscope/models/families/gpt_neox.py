"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): parallel residual, partial rotary, fused ``query_key_value``.

``use_parallel_residual`` is a config switch (``GPTNeoXLayer.forward``: attention and MLP both
read the block's input when it is true), so the fact is read from each checkpoint.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="gpt_neox", model_types=("gpt_neox",),
    norm="LayerNorm", block_norms=("ln1", "ln2"), parallel_residual=None, fused_qkv=True,
)
