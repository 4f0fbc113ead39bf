"""Mistral (``MistralForCausalLM``): GQA; ``sliding_window`` on every layer where the config sets one.

Mistral-7B v0.1 has a 4096-token window, later releases ``sliding_window: null``, so whether
layers slide is read from each checkpoint.
"""

from headscope.models.families import Family

FAMILY = Family(
    name="mistral", model_types=("mistral",),
    norm="RMSNorm", block_norms=("ln1", "ln2"), attention_layers=None,
)
