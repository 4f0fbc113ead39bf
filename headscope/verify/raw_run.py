"""One forward of the raw reference model, read and edited with plain ``torch`` module hooks.

Reads: q, k, v (the q/k/v projection outputs: before any QK-norm and rotary embedding, k and v
per KV head), z (the input of the attention output projection, split per query head), the
output projection's output, patterns (``output_attentions=True``), the model's logits and the
pre-soft-cap logits (the output of ``lm_head``), and the first input of any extra modules.

Edits: ``z_edit`` (a forward pre-hook on the output projection), ``proj_edit`` (a forward hook
on the q/k/v projection) and ``q_scale`` (multiply some heads' *post-norm* queries: a forward
hook on QK-norm's output where the model has one, else on the q projection; the rotary
embedding is linear, so scaling before it equals scaling after it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headscope.verify.outcomes import NotChecked
from headscope.verify.raw_model import RawModel

Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RawRun:
    """What one raw forward captured (float32, on the model's device).

    Attributes:
        logits: (b, p, vocab) the model's output (after any final soft-capping).
        pre_cap: (b, p, vocab) the output of ``lm_head``.
        q: layer -> (b, p, H, d); k, v: layer -> (b, p, KV, d); z: layer -> (b, p, H, d).
        attn_out: layer -> (b, p, d_model) the output projection's output.
        pattern: layer -> (b, H, p, p) when asked for.
        inputs: name -> the first input of each extra module asked for.
    """

    logits: torch.Tensor
    pre_cap: torch.Tensor
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)
    pattern: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def scale_heads(heads: list[int], scale: float) -> Edit:
    """An edit multiplying the given units of x (b, p, units, d) by ``scale``."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, heads] = x[:, :, heads] * scale
        return x

    return fn


def _first(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _q_norm_hook(raw: RawModel, heads: list[int], scale: float, n_pos: int):  # noqa: ANN202 - torch hook
    """Scale heads of a QK-norm output laid out (b, p, H, d), (b, H, p, d) or (b, p, H*d)."""
    h, d = raw.n_heads, raw.d_head

    def fn(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        if out.ndim == 3 and out.shape[-1] == h * d:
            out.view(*out.shape[:2], h, d)[:, :, heads] *= scale
        elif out.ndim == 4 and out.shape[1:] == (n_pos, h, d) and n_pos != h:
            out[:, :, heads] *= scale
        elif out.ndim == 4 and out.shape[1:] == (h, n_pos, d) and n_pos != h:
            out[:, heads] *= scale
        else:
            raise NotChecked(f"QK-norm output of shape {tuple(out.shape)} has no recognised head axis")
        return out

    return fn


def raw_forward(
    raw: RawModel,
    tokens: torch.Tensor,
    z_edit: dict[int, Edit] | None = None,
    proj_edit: dict[tuple[str, int], Edit] | None = None,
    q_scale: dict[int, tuple[list[int], float]] | None = None,
    attentions: bool = False,
    inputs_of: dict[str, nn.Module] | None = None,
) -> RawRun:
    """Run ``tokens`` (b, p) through the raw model with the edits; see the module docstring.

    Args:
        z_edit: layer -> fn(z (b, p, H, d)) -> new z.
        proj_edit: (act, layer) -> fn(x (b, p, units, d)) -> new x, at the projection output.
        q_scale: layer -> (query heads, scale) applied to the post-norm query.
        attentions: also capture the attention patterns.
        inputs_of: name -> module whose first input to keep (e.g. the final norm).
    """
    z_edit, proj_edit, q_scale = z_edit or {}, dict(proj_edit or {}), q_scale or {}
    caps: dict[str, Any] = {"q": {}, "k": {}, "v": {}, "z": {}, "attn_out": {}, "inputs": {}}
    handles: list[Any] = []
    n_pos = int(tokens.shape[1])
    try:
        for layer, (heads, scale) in q_scale.items():
            if raw.has_q_norm(layer):
                handles.append(raw.q_norm[layer].register_forward_hook(_q_norm_hook(raw, heads, scale, n_pos)))
            else:
                prev, sc = proj_edit.get(("q", layer)), scale_heads(heads, scale)
                proj_edit[("q", layer)] = sc if prev is None else (lambda x, p=prev, s=sc: s(p(x)))
        for layer in range(raw.n_layers):
            handles += _layer_hooks(raw, layer, caps, z_edit.get(layer), proj_edit)
        for name, module in (inputs_of or {}).items():
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, name=name: caps["inputs"].__setitem__(name, _first(a, k).detach().float()),
                with_kwargs=True))
        lm_head = raw.need("lm_head")
        handles.append(lm_head.register_forward_hook(lambda m, i, o: caps.__setitem__("pre_cap", o.detach().float())))
        with torch.inference_mode():
            out = raw.hf(input_ids=tokens.to(raw.device), output_attentions=attentions, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    run = RawRun(logits=out.logits.detach().float(), pre_cap=caps["pre_cap"], inputs=caps["inputs"])
    for key in ("q", "k", "v", "z", "attn_out"):
        setattr(run, key, caps[key])
    if attentions:
        if out.attentions is None or len(out.attentions) != raw.n_layers:
            raise NotChecked("the raw model returned no attention patterns with output_attentions=True")
        run.pattern = {i: a.detach().float() for i, a in enumerate(out.attentions)}
    return run


def _layer_hooks(raw: RawModel, layer: int, caps: dict[str, Any], z_fn: Edit | None,
                 proj_edit: dict[tuple[str, int], Edit]) -> list[Any]:
    out_proj, qkv = raw.out_proj[layer], raw.qkv[layer]
    if out_proj is None or qkv is None:
        return []
    h, d = raw.n_heads, raw.d_head

    def z_hook(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        z = x.view(*x.shape[:-1], h, d)
        if z_fn is not None:
            z = z_fn(z.clone())
        caps["z"][layer] = z.detach().float()
        return (z.reshape(x.shape).to(x.dtype), *args[1:]) if z_fn is not None else None

    def keep_out(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        caps["attn_out"][layer] = (out[0] if isinstance(out, tuple) else out).detach().float()

    handles = [out_proj.register_forward_pre_hook(z_hook), out_proj.register_forward_hook(keep_out)]
    edits = {a: proj_edit.get((a, layer)) for a in ("q", "k", "v")}
    if qkv.fused:
        def fused(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
            parts = {a: qkv.split(out, a).clone() for a in ("q", "k", "v")}
            for a, fn in edits.items():
                caps[a][layer] = parts[a].detach().float()
                if fn is not None:
                    parts[a] = fn(parts[a]).to(out.dtype)
            return qkv.join(parts, out) if any(edits.values()) else None

        handles.append(qkv.modules["q"].register_forward_hook(fused))
        return handles
    for act in ("q", "k", "v"):
        def sep(module: nn.Module, inputs: Any, out: torch.Tensor, act: str = act) -> torch.Tensor | None:
            x = qkv.split(out, act)
            caps[act][layer] = x.detach().float()
            fn = edits[act]
            return None if fn is None else fn(x.clone()).reshape(out.shape).to(out.dtype)

        handles.append(qkv.modules[act].register_forward_hook(sep))
    return handles
