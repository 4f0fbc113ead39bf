"""Gemma-2 (``Gemma2ForCausalLM``).

Alternating sliding / global layers (``config.layer_types``), attention-logit and final-logit
soft-capping (``attn_logit_softcapping``, ``final_logit_softcapping``), sandwich norms (a norm
before and after each sublayer), ``(1 + weight)`` RMSNorm and embeddings scaled by
``sqrt(d_model)`` (``Gemma2Model.forward``: ``normalizer``).
"""

from headscope.models.families import Family

FAMILY = Family(
    name="gemma2", model_types=("gemma2",),
    norm="RMSNorm, 1 + weight", block_norms=("ln1", "ln1_post", "ln2", "ln2_post"),
    attention_layers="mixed", softcapping=True, scaled_embedding=True,
)
