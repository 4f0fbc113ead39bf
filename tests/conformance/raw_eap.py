"""The two factors of ``hannamw/EAP-IG``'s edge scores, written for raw Hugging Face models with
module hooks and autograd only (no headscope, no TransformerLens).

**Sender differences** (:func:`reference_deltas`). The reference's ``activation_difference``
(``src/eap/utils.py`` ``make_hooks_and_matrices`` L70-85) is corrupted minus clean of each node's
``out_hook`` (``src/eap/graph.py``): ``hook_embed`` for the input, ``blocks.{l}.attn.hook_result``
for head ``(l, h)`` and ``blocks.{l}.hook_mlp_out`` for MLP ``l``. In TransformerLens
``hook_result`` is ``z_h @ W_O^h`` inside the attention module, before the sum over heads, ``b_O``
and ``ln1_post``; ``hook_mlp_out`` is after ``ln2_post`` (``components/transformer_block.py``,
``apply_mlp``). Raw HF equivalents: ``o_proj``'s input split per head times the matching
column block of ``o_proj.weight``; the output of the post-feedforward norm (the MLP's output where
there is none); the hidden states entering the first decoder layer (Gemma's embedding scale
included, as TransformerLens folds it into ``W_E``).

**Receiver gradients** (:func:`raw_receiver_grads`). A zero-valued leaf ``eps`` (b, p, d_model) is added where a receiver reads the residual: the
final norm's input (logits), the input of the norm before the MLP (the MLP itself on OLMo-2),
and for a q/k/v unit only through that unit's projection of ``ln1(resid + eps)`` (added to its
slice of the projection output as ``y - y.detach()``, so the forward value is unchanged). Then
``d metric / d eps`` is the gradient at that input with every other path kept: TransformerLens'
``hook_{q,k,v}_input`` / ``hook_mlp_in`` / final ``hook_resid_post`` gradients, the ones
``hannamw/EAP-IG`` reads (``src/eap/utils.py`` ``make_hooks_and_matrices``, L87-136). A k/v unit
is a KV head: its gradient is the sum over the group's query heads (the reference ungroups GQA
into one k/v input per query head, whose scores add up to this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .raw_edges import _replace_input
from .raw_hf import RawHF, logit_diff


def _inputs_of(store: dict[int, torch.Tensor], layer: int):  # noqa: ANN202
    def fn(m: nn.Module, args: tuple) -> None:
        store[layer] = args[0].detach().clone()

    return fn


def _outputs_of(store: dict[int, torch.Tensor], layer: int):  # noqa: ANN202
    def fn(m: nn.Module, inputs: Any, out: Any) -> None:
        store[layer] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    return fn


def _reference_acts(raw: RawHF, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(hidden states entering layer 0 (b, p, d), layer -> o_proj input (b, p, H*d_head),
    layer -> the MLP's residual write (b, p, d)) of one raw forward."""
    emb: dict[int, torch.Tensor] = {}
    o_in: dict[int, torch.Tensor] = {}
    mlp_out: dict[int, torch.Tensor] = {}

    def keep_emb(x: torch.Tensor) -> torch.Tensor:
        emb[0] = x.detach().clone()
        return x

    handles = [raw.layers[0].register_forward_pre_hook(_replace_input(keep_emb), with_kwargs=True)]
    for layer in range(raw.n_layers):
        o_proj = raw.attn(layer).o_proj
        handles.append(o_proj.register_forward_pre_hook(_inputs_of(o_in, layer)))
        written = raw.post_mlp_norm(layer) if raw.post_norms else raw.mlp(layer)
        handles.append(written.register_forward_hook(_outputs_of(mlp_out, layer)))
    try:
        with torch.inference_mode():
            raw.model(input_ids=tokens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return emb[0], o_in, mlp_out


def reference_deltas(raw: RawHF, clean: torch.Tensor, corrupted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sender name (``input``, ``a{l}.h{h}``, ``m{l}``) -> (b, p, d_model) the reference's
    corrupted - clean difference: per head ``(z_corr - z_clean)_h @ W_O^h``, before any
    post-attention norm (see the module docstring). Llama-style ``o_proj`` (nn.Linear) only."""
    c_emb, c_o, c_mlp = _reference_acts(raw, clean)
    x_emb, x_o, x_mlp = _reference_acts(raw, corrupted)
    out = {"input": x_emb - c_emb}
    d = raw.d_head
    for layer in range(raw.n_layers):
        out[f"m{layer}"] = x_mlp[layer] - c_mlp[layer]
        weight = raw.attn(layer).o_proj.weight.detach()  # (d_model, H * d_head)
        dz = x_o[layer] - c_o[layer]
        for h in range(raw.n_heads):
            out[f"a{layer}.h{h}"] = dz[..., h * d:(h + 1) * d] @ weight[:, h * d:(h + 1) * d].T
    return out


def add_eps(eps: torch.Tensor):  # noqa: ANN201
    """Forward pre-hook (with kwargs) adding ``eps`` to the module's hidden-states input."""
    return _replace_input(lambda x: x + eps)


def raw_receiver_grads(raw: RawHF, batch: Any, receivers: list[Any],
                       held: Callable[[], list[Any]]) -> dict[str, torch.Tensor]:
    """Gradient of the row-mean raw logit difference at each receiver input, (b, p, d_model),
    in one clean forward with the hooks ``held()`` registers (e.g. an interpolated node group)."""
    b, p = batch.clean.shape
    eps = {r.key: torch.zeros(b, p, raw.d_model, requires_grad=True) for r in receivers}
    resid: dict[int, torch.Tensor] = {}
    handles = held()
    for layer in range(raw.n_layers):
        def keep(x: torch.Tensor, layer: int = layer) -> torch.Tensor:
            resid[layer] = x.detach()
            return x

        handles.append(raw.layers[layer].register_forward_pre_hook(_replace_input(keep), with_kwargs=True))
    for r in receivers:
        if r.kind == "logits":
            handles.append(raw.final_norm.register_forward_pre_hook(add_eps(eps[r.key]), with_kwargs=True))
        elif r.kind == "mlp":
            module = raw.pre_mlp_norm(r.layer) or raw.mlp(r.layer)
            handles.append(module.register_forward_pre_hook(add_eps(eps[r.key]), with_kwargs=True))
        else:  # the unit's projection of ln1(resid + eps), zero-valued, added to its slice only
            proj, norm = raw._proj_module(r.layer, r.input), raw.input_norm(r.layer)

            def extra(module: nn.Module, inputs: Any, out: torch.Tensor, r: Any = r, proj: nn.Module = proj,
                      norm: nn.Module | None = norm) -> torch.Tensor:
                x = resid[r.layer] + eps[r.key]
                y = nn.functional.linear(norm(x) if norm is not None else x, proj.weight, proj.bias)
                bump = (y - y.detach()).view(*out.shape[:2], -1, raw.d_head)[:, :, r.unit]
                out = out.clone().view(*out.shape[:2], -1, raw.d_head)
                out[:, :, r.unit] = out[:, :, r.unit] + bump
                return out.flatten(2)

            handles.append(proj.register_forward_hook(extra))
    try:
        with torch.enable_grad():
            logits = raw.model(input_ids=batch.clean, use_cache=False).logits
            value = logit_diff(logits, batch.end, batch.answer, batch.wrong).mean()
            grads = torch.autograd.grad(value, [eps[r.key] for r in receivers], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    # a held group's own inputs (its heads' q/k/v, its MLP's input) do not reach the metric
    return {r.key: torch.zeros_like(eps[r.key]) if g is None else g for r, g in zip(receivers, grads, strict=True)}
