"""The one naming scheme for per-head activations, and the bridge hooks behind each name.

=========  =====================================  ===========================================
name       bridge hook (alias)                    shape returned by the tracer
=========  =====================================  ===========================================
q          blocks.L.attn.hook_q  (pre-RoPE)       (batch, pos, head, d_head)
k          blocks.L.attn.hook_k  (pre-RoPE)       (batch, pos, head, d_head) per query head*
v          blocks.L.attn.hook_v                   (batch, pos, head, d_head) per query head*
z          blocks.L.attn.hook_z                   (batch, pos, head, d_head)
scores     blocks.L.attn.hook_attn_scores         (batch, head, q_pos, k_pos), pre-softmax
pattern    blocks.L.attn.hook_pattern             (batch, head, q_pos, k_pos)
result     computed from z: z[..., h, :] @ W_O[h]  (batch, pos, head, d_model), without b_O
=========  =====================================  ===========================================

\\* Under grouped-query attention the bridge's k and v hold only the KV heads. By default the
tracer maps them to query heads (query head h reads KV head ``h // group_size``, the order of
HF ``repeat_kv``); pass ``expand_kv=False`` to get the raw KV heads instead.

These follow TransformerLens's layout, so a TL user reads them without surprises. Heads are
labelled ``L.H`` (e.g. ``9.6``) everywhere else in headscope.
"""

from __future__ import annotations

ACTIVATIONS: tuple[str, ...] = ("q", "k", "v", "z", "scores", "pattern", "result")

_HOOKS = {
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "result": "blocks.{layer}.attn.hook_z",
}


def hook_name(act: str, layer: int) -> str:
    """Bridge hook alias that carries activation ``act`` at ``layer``."""
    return _HOOKS[act].format(layer=layer)
