"""The raw model's norms that linear decompositions depend on, found by the values they see.

Norm modules are not named consistently (Llama's ``post_attention_layernorm`` is the norm
*before* the MLP; Gemma's is the norm *after* attention), so they are identified by a probe
forward: every parameter-holding leaf module with a 1-D weight of width ``d_model`` is hooked,
and

- the **final norm** is the one whose input is the last layer's output and whose output is
  ``lm_head``'s input;
- a layer's **post-attention norm** (Gemma-2/3, OLMo-2) is the one inside the layer whose
  input is the attention output projection's output; a layer without one adds the
  projection's output to the residual directly.

:func:`frozen_norm` applies a norm to a component ``v`` of a residual ``x`` with the scale
frozen at ``x``'s: ``(N(v) - bias) * s(v) / s(x)``, where the module ``N`` itself supplies its
elementwise multiplier (``1 + weight`` on Gemma) and centring, and ``s`` is the textbook divisor
(``sqrt(mean(v^2) + eps)``; LayerNorm: of the centred ``v``). That the result is linear in ``v``
is checked on probe vectors before a norm is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headscope.verify.outcomes import NotChecked
from headscope.verify.raw_model import RawModel


@dataclass
class NormSites:
    """final: the final norm (None if not found, with ``why``); post_attn: per layer or None."""

    final: nn.Module | None
    post_attn: list[nn.Module | None]
    why: str = ""

    def need_final(self) -> nn.Module:
        if self.final is None:
            raise NotChecked(self.why)
        return self.final


def _norm_like(module: nn.Module, d_model: int) -> bool:
    w = getattr(module, "weight", None)
    return (
        isinstance(w, torch.Tensor) and w.ndim == 1 and int(w.shape[0]) == d_model
        and not list(module.children()) and not isinstance(module, nn.Embedding)
    )


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6 * float(b.float().abs().max() + 1)))


def find_norms(raw: RawModel, tokens: torch.Tensor) -> NormSites:
    """Probe forward on ``tokens`` (1, p) to locate the final and post-attention norms."""
    seen_in: dict[int, torch.Tensor] = {}
    seen_out: dict[int, torch.Tensor] = {}
    caps: dict[str, Any] = {"o": {}}
    handles = []
    norms = [m for m in raw.hf.modules() if _norm_like(m, raw.d_model)]

    def keep(m: nn.Module, args: tuple, out: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen_in[id(m)] = args[0].detach()
            seen_out[id(m)] = (out[0] if isinstance(out, tuple) else out).detach()

    for m in norms:
        handles.append(m.register_forward_hook(keep))
    for layer, proj in enumerate(raw.out_proj):
        if proj is not None:
            handles.append(proj.register_forward_hook(
                lambda m, a, o, layer=layer: caps["o"].__setitem__(layer, (o[0] if isinstance(o, tuple) else o).detach())))
    handles.append(raw.layers[-1].register_forward_hook(
        lambda m, a, o: caps.__setitem__("last", (o[0] if isinstance(o, tuple) else o).detach())))
    lm_head = raw.need("lm_head")
    handles.append(lm_head.register_forward_pre_hook(lambda m, a: caps.__setitem__("head_in", a[0].detach())))
    try:
        with torch.inference_mode():
            raw.hf(input_ids=tokens.to(raw.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    in_layers = {id(m) for layer in raw.layers for m in layer.modules()}
    finals = [m for m in norms if id(m) not in in_layers and _same(seen_in.get(id(m)), caps.get("last"))
              and _same(seen_out.get(id(m)), caps.get("head_in"))]
    post: list[nn.Module | None] = []
    for layer, block in enumerate(raw.layers):
        attn_ids = {id(m) for m in raw.attn[layer].modules()} if raw.attn[layer] is not None else set()
        hits = [m for m in block.modules() if id(m) in seen_in and id(m) not in attn_ids
                and _same(seen_in[id(m)], caps["o"].get(layer))]
        post.append(hits[0] if len(hits) == 1 else None)
    why = "" if len(finals) == 1 else f"found {len(finals)} final-norm candidates between the last layer and lm_head (need one)"
    return NormSites(finals[0] if len(finals) == 1 else None, post, why)


def _eps(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise NotChecked(f"{type(module).__name__} exposes no epsilon")


def _centred(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name)


def norm_divisor(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The textbook divisor of ``x`` (..., d) under ``module``: (..., 1)."""
    c = x.float() - x.float().mean(-1, keepdim=True) if _centred(module) else x.float()
    return torch.sqrt(c.pow(2).mean(-1, keepdim=True) + _eps(module))


def _unscaled(module: nn.Module, v: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    with torch.inference_mode():
        out = module(v.to(next(module.parameters()).dtype)).float()
    if isinstance(bias, torch.Tensor):
        out = out - bias.detach().float()
    return out * norm_divisor(module, v)


def check_linear(module: nn.Module) -> None:
    """Raise NotChecked unless ``(N(v) - bias) * s(v)`` is linear in ``v`` (probe vectors)."""
    if getattr(module, "_headscope_verify_linear", False):
        return
    d = int(module.weight.shape[0])
    g = torch.Generator().manual_seed(7)
    dev = module.weight.device
    a, b = (torch.randn(3, d, generator=g).to(dev) * 3 for _ in range(2))
    lhs, rhs = _unscaled(module, a + 2 * b), _unscaled(module, a) + 2 * _unscaled(module, b)
    rtol = 1e-4 if module.weight.dtype == torch.float32 else 3e-2
    if not torch.allclose(lhs, rhs, rtol=rtol, atol=rtol * float(rhs.abs().max())):
        raise NotChecked(f"{type(module).__name__} is not an RMSNorm/LayerNorm with a frozen-scale linear form")
    module._headscope_verify_linear = True


def frozen_norm(module: nn.Module, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``module`` applied to component ``v`` (..., d) of residual ``x`` (broadcastable), scale frozen at ``x``."""
    check_linear(module)
    return _unscaled(module, v) / norm_divisor(module, x)
