"""The independent reference: a second copy of a saved model, driven by plain HF module hooks.

Only ``torch`` and ``transformers`` are used here, never headscope or TransformerLens. The
model is loaded with ``AutoModelForCausalLM.from_pretrained(dir, attn_implementation="eager")``
and every reference number is read or edited with ``register_forward_hook`` /
``register_forward_pre_hook`` on the Hugging Face modules:

* q, k, v: the output of the q/k/v projections (the fused ``c_attn`` of GPT-2, the per-head
  interleaved ``query_key_value`` of GPT-NeoX, the ``[q | k | v]`` ``qkv_proj`` of Phi-3):
  pre-RoPE and pre-QK-norm, k and v per KV head;
* z: the input of the attention output projection (``o_proj`` / ``c_proj`` / ``dense``),
  (batch, pos, head, d_head);
* the post-norm query of a head (what query masking must scale): the output of ``q_norm`` on
  QK-norm families (per head on Qwen3/Gemma-3, over all heads jointly on OLMo-2), else the q
  projection (scaling before RoPE equals scaling after it);
* patterns: ``output_attentions=True``;
* what each sublayer adds to the residual stream (the attention output projection, or its
  post-attention norm on sandwich/post-norm families; the MLP, or its post-feedforward norm);
  the residual entering the first layer and the final norm; the logits before final-logit
  soft-capping (the ``lm_head`` output).

Module layouts are written out per family below, from the Hugging Face modelling code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

Edit = Callable[[torch.Tensor], torch.Tensor]

# where the blocks live, and their submodules, per model_type
_LAYERS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}
_ATTN = {"gpt2": "attn", "gpt_neox": "attention"}
_OUT = {"gpt2": "c_proj", "gpt_neox": "dense"}
_FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}
_LM_HEAD: dict[str, str] = {}  # GPT-NeoX's embed_out is lm_head since transformers 5.14
_FUSED = {"gpt2": "c_attn", "gpt_neox": "query_key_value", "phi3": "qkv_proj"}
# families whose attention / MLP outputs pass through a norm before the residual add
_POST_NORMS = {"gemma2", "gemma3_text", "olmo2"}
# layout of the q_norm output: (b, p, H, d), (b, H, p, d) or (b, p, H*d)
_Q_NORM = {"qwen3": "bphd", "gemma3_text": "bhpd", "olmo2": "bpf"}


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _first_child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if child is not None:
            return child
    return None


@dataclass
class RawRun:
    """What one raw forward captured; per-layer dicts are keyed by layer index.

    Shapes: ``logits``/``logits_pre_cap`` (b, p, vocab); ``q`` (b, p, H, d); ``k``/``v``
    (b, p, KV, d); ``z`` (b, p, H, d); ``pattern`` (b, H, p, p); ``emb``/``resid_final``
    (b, p, d_model); ``attn_add``/``mlp_add`` (b, p, d_model) what the sublayer adds to the
    residual; ``attn_pre_norm`` (b, p, d_model) the output projection's output before the
    post-attention norm (sandwich families only).
    """

    logits: torch.Tensor
    logits_pre_cap: torch.Tensor
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    pattern: dict[int, torch.Tensor] = field(default_factory=dict)
    emb: torch.Tensor | None = None
    resid_final: torch.Tensor | None = None
    attn_add: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_pre_norm: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_add: dict[int, torch.Tensor] = field(default_factory=dict)


class RawHF:
    """A Hugging Face causal LM loaded from ``directory`` with eager attention, float32."""

    def __init__(self, directory: str | Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(
            str(directory), attn_implementation="eager", dtype=torch.float32, local_files_only=True
        ).eval()
        self.config = self.model.config
        self.type = self.config.model_type
        cfg = self.config
        self.n_layers = int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
        self.n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        self.d_model = d_model
        self.d_head = int(getattr(cfg, "head_dim", None) or d_model // self.n_heads)
        self.group = self.n_heads // self.n_kv
        self.layers = _get(self.model, _LAYERS.get(self.type, "model.layers"))
        self.final_norm = _get(self.model, _FINAL_NORM.get(self.type, "model.norm"))
        self.lm_head = _get(self.model, _LM_HEAD.get(self.type, "lm_head"))
        self.post_norms = self.type in _POST_NORMS
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)

    # ------------------------------------------------------------------ structure
    def attn(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], _ATTN.get(self.type, "self_attn"))

    def out_proj(self, layer: int) -> nn.Module:
        return getattr(self.attn(layer), _OUT.get(self.type, "o_proj"))

    def mlp(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp

    def post_attn_norm(self, layer: int) -> nn.Module:
        assert self.post_norms
        return self.layers[layer].post_attention_layernorm

    def post_mlp_norm(self, layer: int) -> nn.Module:
        assert self.post_norms
        return self.layers[layer].post_feedforward_layernorm

    def input_norm(self, layer: int) -> nn.Module | None:
        """The norm feeding attention (None for OLMo-2's post-norm-only blocks)."""
        return _first_child(self.layers[layer], ("ln_1", "input_layernorm"))

    def pre_mlp_norm(self, layer: int) -> nn.Module | None:
        """The norm feeding the MLP (None for OLMo-2). GPT-NeoX and Llama-style models call it
        ``post_attention_layernorm``; Gemma calls that its attention *output* norm."""
        names = ("ln_2", "pre_feedforward_layernorm") if self.post_norms or self.type == "gpt2" else ("post_attention_layernorm",)
        return _first_child(self.layers[layer], names)

    def sliding_window(self, layer: int) -> int | None:
        """The layer's sliding window (keys with ``q - k < window``), None for global layers."""
        window = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None)
        if types is not None:
            return window if types[layer] == "sliding_attention" else None
        return window

    def embed_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach()

    def unembed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the unembedding matrix, (n, d_model)."""
        return self.lm_head.weight.detach()[ids]

    def w_v(self, layer: int, kv: int) -> torch.Tensor:
        """(d_model, d_head) value weights of KV head ``kv``, read through the projection module
        (its output on the identity basis, minus its bias)."""
        eye = torch.eye(self.d_model).unsqueeze(0)
        zero = torch.zeros(1, 1, self.d_model)
        with torch.inference_mode():
            proj = self._proj_module(layer, "v")
            out = proj(eye) - proj(zero)
            v = self._split(out, "v") if self.type in _FUSED else out.view(1, self.d_model, self.n_kv, self.d_head)
        return v[0, :, kv]

    def head_out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head output ``z_h @ W_O^h`` through the output projection module, without its bias:
        z (..., H, d_head) -> (..., H, d_model)."""
        proj = self.out_proj(layer)
        lead = z.shape[:-2]
        eye = torch.eye(self.n_heads)
        masked = z.unsqueeze(-3) * eye.view(self.n_heads, self.n_heads, 1)  # (..., H, H, d)
        flat = masked.reshape(*lead, self.n_heads, self.n_heads * self.d_head)
        with torch.inference_mode():
            return proj(flat) - proj(torch.zeros_like(flat))

    def out_bias(self, layer: int) -> torch.Tensor:
        proj = self.out_proj(layer)
        with torch.inference_mode():
            return proj(torch.zeros(1, self.n_heads * self.d_head))[0]

    # ------------------------------------------------------------------ q/k/v projections
    def _proj_module(self, layer: int, act: str) -> nn.Module:
        attn = self.attn(layer)
        if self.type in _FUSED:
            return getattr(attn, _FUSED[self.type])
        return getattr(attn, f"{act}_proj")

    def _split(self, out: torch.Tensor, act: str) -> torch.Tensor:
        """The ``act`` part of a fused projection output (b, p, F) as (b, p, units, d_head)."""
        b, p = out.shape[:2]
        h, kv, d = self.n_heads, self.n_kv, self.d_head
        i = "qkv".index(act)
        if self.type == "gpt2":  # [q | k | v], each heads-major
            return out.split(h * d, -1)[i].reshape(b, p, h, d)
        if self.type == "gpt_neox":  # per head [q | k | v]
            return out.view(b, p, h, 3 * d).chunk(3, -1)[i]
        sizes = [h * d, kv * d, kv * d]  # phi3: [q | k | v]
        return out.split(sizes, -1)[i].reshape(b, p, -1, d)

    def _join(self, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        b, p = like.shape[:2]
        if self.type == "gpt_neox":
            return torch.cat([parts["q"], parts["k"], parts["v"]], -1).reshape(like.shape)
        return torch.cat([parts[a].reshape(b, p, -1) for a in "qkv"], -1)

    # ------------------------------------------------------------------ the forward
    @torch.inference_mode()
    def run(
        self,
        tokens: torch.Tensor,
        z_edit: dict[int, Edit] | None = None,
        proj_edit: dict[tuple[str, int], Edit] | None = None,
        q_post_scale: dict[int, tuple[list[int], float]] | None = None,
        attentions: bool = False,
    ) -> RawRun:
        """One forward of ``tokens`` (b, p) with optional edits; captures everything above.

        Args:
            z_edit: layer -> fn(z (b, p, H, d)) -> new z, at the output projection's input.
            proj_edit: (act, layer) -> fn(x (b, p, units, d)) -> new x, at the q/k/v projection
                output (units: query heads for q, KV heads for k/v).
            q_post_scale: layer -> (heads, scale): multiply those heads' post-norm queries.
            attentions: also return the attention patterns (``output_attentions=True``).
        """
        z_edit, proj_edit, q_post_scale = z_edit or {}, dict(proj_edit or {}), q_post_scale or {}
        caps: dict[str, Any] = {"q": {}, "k": {}, "v": {}, "z": {}, "attn_add": {}, "attn_pre_norm": {}, "mlp_add": {}}
        handles = []

        def scale_heads(heads: list[int], scale: float) -> Edit:
            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                x[:, :, heads] = x[:, :, heads] * scale
                return x

            return fn

        for layer, (heads, scale) in q_post_scale.items():
            if self.type in _Q_NORM:
                handles.append(self.attn(layer).q_norm.register_forward_hook(self._q_norm_hook(heads, scale)))
            else:  # no norm between the projection and the scores: scale the projection
                prev = proj_edit.get(("q", layer))
                scale_fn = scale_heads(heads, scale)
                proj_edit[("q", layer)] = scale_fn if prev is None else (lambda x, p=prev, s=scale_fn: s(p(x)))

        for layer in range(self.n_layers):
            handles += self._layer_hooks(layer, caps, z_edit.get(layer), proj_edit)
        handles.append(self.layers[0].register_forward_pre_hook(self._keep_input(caps, "emb"), with_kwargs=True))
        handles.append(self.final_norm.register_forward_pre_hook(self._keep_input(caps, "resid_final"), with_kwargs=True))
        handles.append(self.lm_head.register_forward_hook(lambda m, i, o: caps.__setitem__("pre_cap", o.detach().clone())))
        try:
            out = self.model(input_ids=tokens, output_attentions=attentions, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        run = RawRun(logits=out.logits.detach(), logits_pre_cap=caps["pre_cap"], emb=caps["emb"],
                     resid_final=caps["resid_final"])
        for key in ("q", "k", "v", "z", "attn_add", "attn_pre_norm", "mlp_add"):
            setattr(run, key, caps[key])
        if attentions:
            run.pattern = {i: a.detach() for i, a in enumerate(out.attentions)}
        return run

    def _q_norm_hook(self, heads: list[int], scale: float):  # noqa: ANN202
        layout = _Q_NORM[self.type]

        def fn(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            if layout == "bphd":
                out[:, :, heads] = out[:, :, heads] * scale
            elif layout == "bhpd":
                out[:, heads] = out[:, heads] * scale
            else:  # (b, p, H*d): OLMo-2 normalises over all heads jointly
                view = out.view(*out.shape[:2], self.n_heads, self.d_head)
                view[:, :, heads] = view[:, :, heads] * scale
            return out

        return fn

    @staticmethod
    def _keep_input(caps: dict[str, Any], key: str):  # noqa: ANN205
        def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            caps[key] = x.detach().clone()

        return fn

    def _layer_hooks(self, layer: int, caps: dict[str, Any], z_fn: Edit | None,
                     proj_edit: dict[tuple[str, int], Edit]) -> list[Any]:
        handles = []
        h, d = self.n_heads, self.d_head

        def out_pre(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            z = x.view(*x.shape[:-1], h, d)
            if z_fn is not None:
                z = z_fn(z.clone())
            caps["z"][layer] = z.detach().clone()
            return (z.reshape(x.shape), *args[1:]) if z_fn is not None else None

        handles.append(self.out_proj(layer).register_forward_pre_hook(out_pre))
        edits = {a: proj_edit.get((a, layer)) for a in "qkv"}

        if self.type in _FUSED:
            def fused(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
                parts = {a: self._split(out, a).clone() for a in "qkv"}
                for a in "qkv":
                    caps[a][layer] = parts[a].detach().clone()  # captured before any edit
                    if edits[a] is not None:
                        parts[a] = edits[a](parts[a])
                return self._join(parts, out) if any(edits.values()) else None

            handles.append(self._proj_module(layer, "q").register_forward_hook(fused))
        else:
            for a in "qkv":
                def sep(module: nn.Module, inputs: Any, out: torch.Tensor, a: str = a) -> torch.Tensor | None:
                    x = out.view(*out.shape[:-1], -1, d)
                    caps[a][layer] = x.detach().clone()
                    if edits[a] is None:
                        return None
                    return edits[a](x.clone()).reshape(out.shape)

                handles.append(self._proj_module(layer, a).register_forward_hook(sep))

        def keep(key: str):  # noqa: ANN202
            def fn(module: nn.Module, inputs: Any, out: Any) -> None:
                caps[key][layer] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            return fn

        if self.post_norms:
            handles.append(self.post_attn_norm(layer).register_forward_hook(keep("attn_add")))
            handles.append(self.out_proj(layer).register_forward_hook(keep("attn_pre_norm")))
            handles.append(self.post_mlp_norm(layer).register_forward_hook(keep("mlp_add")))
        else:
            handles.append(self.out_proj(layer).register_forward_hook(keep("attn_add")))
            handles.append(self.mlp(layer).register_forward_hook(keep("mlp_add")))
        return handles

    # ------------------------------------------------------------------ norms, applied as modules
    @staticmethod
    def norm_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-position scale the norm divides ``x`` (..., d) by: (..., 1)."""
        eps = float(getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-6)
        if isinstance(module, nn.LayerNorm):
            return (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def frozen_norm(self, module: nn.Module, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The norm ``module`` applied to a component ``v`` of ``x`` with the scale frozen at
        ``x``'s, without the bias: ``(module(v) - bias) * scale(v) / scale(x)``. The module itself
        supplies its real elementwise multiplier (``1 + weight`` on Gemma) and centring."""
        with torch.inference_mode():
            bias = getattr(module, "bias", None)
            out = module(v)
            if bias is not None:
                out = out - bias
            return out * self.norm_scale(module, v) / self.norm_scale(module, x)

    def norm_bias(self, module: nn.Module) -> torch.Tensor | None:
        bias = getattr(module, "bias", None)
        return None if bias is None else bias.detach()


def end_rows(x: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """x (b, p, ...) at each row's ``end`` position: (b, ...)."""
    return x[torch.arange(x.shape[0]), end]


def logit_diff(logits: torch.Tensor, end: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """(b,) ``logits[row, end, answer] - logits[row, end, wrong]``."""
    at = end_rows(logits, end)
    rows = torch.arange(at.shape[0])
    return at[rows, answer] - at[rows, wrong]
