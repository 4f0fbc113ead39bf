"""Which difference of a head's output EAP / EAP-IG multiply with the receiver gradient.

``sender_delta="post_norm"`` (headscope's default): ``runs.deltas`` of :func:`headscope.circuits.exact.prepare`,
the change of what the attention sublayer adds to the residual when only head ``h``'s z is
corrupted in the clean run. On Gemma-2/3 and OLMo-2 that change goes through the post-attention
norm ``ln1_post`` (every other head clean), so it is exactly the edit exact edge patching makes.

``sender_delta="pre_norm"`` (the reference's): the head's per-head output difference before the
post-attention norm, ``(z_corrupted - z_clean)_h @ W_O^h`` (n, pos, d_model), without ``b_O``.
``hannamw/EAP-IG`` (``src/eap/graph.py`` ``AttentionNode``: ``out_hook = blocks.{l}.attn.hook_result``;
``src/eap/utils.py`` ``make_hooks_and_matrices`` L70-85: ``activation_difference`` accumulates
corrupted minus clean of each node's ``out_hook``, L87-104: ``einsum`` with the gradient at the
receiver's ``hook_{q,k,v}_input`` / ``hook_mlp_in`` / final ``hook_resid_post`` over batch, pos and
d_model) takes TransformerLens' ``hook_result``, which sits inside the attention module, before
the sum over heads and before ``ln1_post`` (TransformerLens ``components/transformer_block.py``:
``attn_out = hook_attn_out(ln1_post(attn(...)))``; the installed bridge, ``AttentionBridge.
_compute_per_head_result``, the same). MLPs are unchanged: the reference's MLP node reads
``hook_mlp_out``, which TransformerLens places after ``ln2_post`` (``apply_mlp``), i.e. what the
MLP adds to the residual, headscope's MLP delta in both conventions; the input node reads
``hook_embed`` (the residual entering block 0, also unchanged).

Without post-attention norms the two are the same quantity (the sublayer output is
``sum_h z_h W_O^h + b_O``, linear in each head's z), equal up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns
from headscope.errors import HeadscopeError
from headscope.models.facts import arch_facts

SENDER_DELTAS = ("post_norm", "pre_norm")


def check_sender_delta(sender_delta: str) -> None:
    """One-line error unless ``sender_delta`` is ``post_norm`` or ``pre_norm``."""
    if sender_delta not in SENDER_DELTAS:
        raise HeadscopeError(f"sender_delta must be one of {', '.join(SENDER_DELTAS)} (pre_norm: hannamw/EAP-IG's "
                             f"per-head hook_result difference before the post-attention norm); got '{sender_delta}'.")


def has_post_attention_norm(model: Any) -> bool:
    """True where some block has a norm on the attention output (``ln1_post``: Gemma-2/3, OLMo-2)."""
    return arch_facts(model).post_attention_norm


def pre_norm_deltas(model: Any, runs: EdgeRuns) -> dict[str, torch.Tensor]:
    """``runs.deltas`` with every head's entry replaced by ``(z_corr - z_clean)_h @ W_O^h``.

    Returns:
        sender name -> (n, pos, d_model) float32; ``input`` and ``m{l}`` are ``runs.deltas``'s.
    """
    out = dict(runs.deltas)
    for layer in range(model.n_layers):
        dz = (runs.corrupted.acts[("z", layer)] - runs.clean.acts[("z", layer)]).float()  # (n, pos, H, d_head)
        w_o = model.bridge.blocks[layer].attn.W_O.detach().float().to(dz.device)  # (H, d_head, d_model)
        per_head = torch.einsum("nphd,hdm->hnpm", dz, w_o)
        for h in range(per_head.shape[0]):
            out[f"a{layer}.h{h}"] = per_head[h]
    return out


def sender_deltas(model: Any, runs: EdgeRuns, sender_delta: str) -> dict[str, torch.Tensor]:
    """The sender differences of ``sender_delta`` (``post_norm``: ``runs.deltas`` itself)."""
    check_sender_delta(sender_delta)
    return runs.deltas if sender_delta == "post_norm" else pre_norm_deltas(model, runs)


def describe(model: Any, sender_delta: str) -> str:
    """The provenance line of the choice on ``model``."""
    post = has_post_attention_norm(model)
    if sender_delta == "post_norm":
        what = "head: change of the attention sublayer's residual write with only that head's z corrupted"
        return what + (" (after the post-attention norm, the edit exact patching makes)" if post else "")
    what = "head: (z_corrupted - z_clean)_h W_O^h, hannamw/EAP-IG's hook_result difference"
    if post:
        return what + ", before the post-attention norm; MLPs: after their post-norm (hook_mlp_out), as the reference"
    return what + "; no post-attention norm in this model: the same as post_norm up to float rounding"
