"""OLMo-2 (``Olmo2ForCausalLM``): post-norm blocks and QK-norm over all heads.

``Olmo2DecoderLayer.forward`` normalises each sublayer's output before the residual add
(``post_attention_layernorm``, ``post_feedforward_layernorm``) and has no input norms;
``Olmo2Attention`` applies one RMSNorm to all heads' queries (``q_norm`` over
``num_heads * head_dim``) and one to all keys.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="olmo2", model_types=("olmo2",),
    norm="RMSNorm", block_norms=("ln1_post", "ln2_post"), qk_norm="all_heads",
)
