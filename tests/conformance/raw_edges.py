"""Raw Hugging Face edge patching, written with module hooks only (no headscope, no TransformerLens).

An edge ``sender -> receiver input``: the clean forward is repeated with the receiver's input
residual replaced by ``clean residual + scale * (corrupted - clean sender output)``, only for
that input. Sender outputs (what each component adds to the residual):

* ``input``: the hidden states entering the first decoder layer;
* head ``(l, h)``: the change of what the attention sublayer adds to the residual (the output
  projection's output, or its post-attention norm on Gemma/OLMo-2) when head ``h``'s input to
  the output projection is set to its corrupted value in the clean run;
* MLP ``l``: the MLP's (post-norm) output, corrupted minus clean.

Receivers: q/k/v of layer ``l``: the layer is run on the edited residual (a forward pre-hook on
the decoder layer replacing its hidden states) and the projection output of the receiver unit
is read, then written into a clean run (``RawHF.run(proj_edit=...)``); the MLP: a forward
pre-hook adding the delta to the input of the norm before the MLP (the MLP itself on OLMo-2);
the logits: a forward pre-hook adding it to the final norm's input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .raw_hf import RawHF


def _replace_input(fn: Callable[[torch.Tensor], torch.Tensor]):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = fn(kwargs["hidden_states"])
        return args, kwargs

    return hook


def layer_inputs(raw: RawHF, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """The hidden states entering every decoder layer, (b, p, d_model)."""
    got: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(raw.n_layers):
        def keep(x: torch.Tensor, layer: int = layer) -> torch.Tensor:
            got[layer] = x.detach().clone()
            return x

        handles.append(raw.layers[layer].register_forward_pre_hook(_replace_input(keep), with_kwargs=True))
    try:
        raw.run(tokens)
    finally:
        for h in handles:
            h.remove()
    return got


def sender_deltas(raw: RawHF, clean: torch.Tensor, corrupted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sender name (``input``, ``a{l}.h{h}``, ``m{l}``) -> (b, p, d_model) corrupted - clean output."""
    c_run, x_run = raw.run(clean), raw.run(corrupted)
    deltas = {"input": x_run.emb - c_run.emb}
    b = clean.shape[0]
    for layer in range(raw.n_layers):
        deltas[f"m{layer}"] = x_run.mlp_add[layer] - c_run.mlp_add[layer]
        for h in range(raw.n_heads):
            def swap(z: torch.Tensor, h: int = h, layer: int = layer) -> torch.Tensor:
                z[:, :, h] = x_run.z[layer][:, :, h]
                return z

            run = raw.run(clean, z_edit={layer: swap})
            deltas[f"a{layer}.h{h}"] = run.attn_add[layer] - c_run.attn_add[layer]
    assert deltas["input"].shape[0] == b
    return deltas


def edge_logits(raw: RawHF, clean: torch.Tensor, delta: torch.Tensor, kind: str, layer: int, act: str, unit: int,
                resid_in: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits (b, p, vocab) of the clean run with ``delta`` patched into one receiver input.

    Args:
        kind: ``head`` (act q/k/v, unit = query head for q, KV head for k/v), ``mlp`` or ``logits``.
        resid_in: :func:`layer_inputs` of the clean run.
    """
    if kind == "head":
        edited = resid_in[layer] + delta

        def put(x: torch.Tensor) -> torch.Tensor:
            return edited

        handle = raw.layers[layer].register_forward_pre_hook(_replace_input(put), with_kwargs=True)
        try:
            new = getattr(raw.run(clean), act)[layer]
        finally:
            handle.remove()

        def write(x: torch.Tensor) -> torch.Tensor:
            x[:, :, unit] = new[:, :, unit]
            return x

        return raw.run(clean, proj_edit={(act, layer): write}).logits
    if kind == "mlp":
        module: Any = raw.pre_mlp_norm(layer) or raw.mlp(layer)
    else:
        module = raw.final_norm
    handle = module.register_forward_pre_hook(_replace_input(lambda x: x + delta), with_kwargs=True)
    try:
        return raw.run(clean).logits
    finally:
        handle.remove()


class FixedTask:
    """A contrastive task serving a fixed batch (the conformance prompts)."""

    name = "conformance"

    def __init__(self, batch) -> None:  # noqa: ANN001
        self._batch = batch

    def batch(self, model):  # noqa: ANN001, ANN201
        return self._batch

    def describe(self) -> dict:
        return {"name": self.name}
