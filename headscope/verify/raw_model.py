"""The independent reference: a second copy of the user's model, as a plain Hugging Face model.

Loaded with ``attn_implementation="eager"`` from the directory the user's model came from
(:attr:`headscope.models.Model.source_dir`; for toy models rebuilt with
:func:`headscope.toy.build_toy`), never through TransformerLens or headscope's tracer and
engine. Its modules are found generically, from the config's shape facts, and validated by
shape (and, for norms, by the values that flow through them; see :mod:`raw_probe`):

- the decoder layer list: the ``nn.ModuleList`` of length ``n_layers`` whose layers hold an
  attention module;
- a layer's attention module: the shallowest submodule with an output projection
  (:data:`OUT_PROJ_NAMES`, ``n_heads * d_head -> d_model``) and q/k/v projections
  (:class:`headscope.verify.raw_qkv.QKV`);
- QK-norm: a child of the attention module named in :data:`Q_NORM_NAMES`;
- the embedding and unembedding: ``get_input_embeddings()`` / ``get_output_embeddings()``;
  a learned position embedding: another plain ``nn.Embedding`` of width ``d_model``.

A piece that cannot be found is recorded in :attr:`RawModel.missing` and every check that needs
it is reported ``NOT CHECKED`` with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from headscope.errors import HeadscopeError
from headscope.verify.outcomes import NotChecked
from headscope.verify.raw_qkv import QKV, find_qkv, linear_dims

OUT_PROJ_NAMES: tuple[str, ...] = ("o_proj", "c_proj", "dense", "out_proj")
Q_NORM_NAMES: tuple[str, ...] = ("q_norm", "q_layernorm", "query_layernorm")


def _first_int(cfg: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_raw_hf(model: Any) -> nn.Module:
    """A fresh HF copy of ``model``'s weights, eager attention, same dtype and device.

    Raises:
        HeadscopeError: the model records no directory to load a second copy from.
    """
    if model.source == "toy":
        from headscope.toy import build_toy

        hf, _ = build_toy(model.spec)
        hf.set_attn_implementation("eager")
    elif model.source_dir:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(
            model.source_dir, attn_implementation="eager", dtype=model.dtype, local_files_only=True
        )
    else:
        raise HeadscopeError(
            f"verify needs a second, raw copy of {model.spec} but the model records no directory to "
            "load it from: load it with headscope.load_model (alias, toy, .gguf, directory or hub id)."
        )
    return hf.to(device=model.device, dtype=model.dtype).eval()


class RawModel:
    """A raw HF causal LM and its discovered modules (see the module docstring).

    Attributes:
        hf: the HF model (eval mode).
        n_layers, n_heads, n_kv, d_head, d_model, group: shape facts from the HF config.
        layers: the decoder layer list.
        attn, out_proj, qkv, q_norm: per layer (None where not found; see ``missing``).
        missing: piece -> why it could not be found.
    """

    def __init__(self, hf: nn.Module) -> None:
        self.hf = hf
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self.config = cfg
        self.missing: dict[str, str] = {}
        n_layers = _first_int(cfg, ("num_hidden_layers", "n_layer", "num_layers"))
        n_heads = _first_int(cfg, ("num_attention_heads", "n_head"))
        d_model = _first_int(cfg, ("hidden_size", "n_embd", "d_model"))
        if not (n_layers and n_heads and d_model):
            raise NotChecked(f"{type(hf).__name__}: the config names no layer count, head count or width")
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model
        self.n_kv = _first_int(cfg, ("num_key_value_heads",)) or n_heads
        self.d_head = _first_int(cfg, ("head_dim",)) or d_model // n_heads
        self.group = n_heads // self.n_kv
        self.layers = self._layer_list()
        self.attn: list[nn.Module | None] = []
        self.out_proj: list[nn.Module | None] = []
        self.qkv: list[QKV | None] = []
        self.q_norm: list[nn.Module | None] = []
        for layer in range(n_layers):
            self._find_attention(layer)
        self.embed = hf.get_input_embeddings()
        self.lm_head = hf.get_output_embeddings()
        if self.lm_head is None:
            self.missing["lm_head"] = f"{type(hf).__name__} has no output embedding (get_output_embeddings() is None)"

    # ------------------------------------------------------------------ discovery
    def _layer_list(self) -> nn.ModuleList:
        found = [
            m for m in self.hf.modules()
            if isinstance(m, nn.ModuleList) and len(m) == self.n_layers and self._attention_in(m[0]) is not None
        ]
        if len(found) != 1:
            raise NotChecked(
                f"{type(self.hf).__name__}: found {len(found)} lists of {self.n_layers} layers with an attention "
                "module (need exactly one)"
            )
        return found[0]

    def _attention_in(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """(attention module, output projection): the shallowest submodule that has both an
        output projection of the right shape and q/k/v projections."""
        want = (self.n_heads * self.d_head, self.d_model)
        for _, module in sorted(layer.named_modules(), key=lambda item: item[0].count(".") if item[0] else -1):
            for name in OUT_PROJ_NAMES:
                out = getattr(module, name, None)
                if isinstance(out, nn.Module) and linear_dims(out) == want and self._qkv_of(module) is not None:
                    return module, out
        return None

    def _qkv_of(self, attn: nn.Module) -> QKV | None:
        return find_qkv(attn, self.d_model, self.n_heads, self.n_kv, self.d_head)

    def _find_attention(self, layer: int) -> None:
        found = self._attention_in(self.layers[layer])
        if found is None:
            self.missing[f"attention {layer}"] = f"layer {layer} has no attention module with q/k/v and output projections"
            self.attn.append(None)
            self.out_proj.append(None)
            self.qkv.append(None)
            self.q_norm.append(None)
            return
        attn, out = found
        self.attn.append(attn)
        self.out_proj.append(out)
        self.qkv.append(self._qkv_of(attn))
        norm = next((getattr(attn, n) for n in Q_NORM_NAMES if isinstance(getattr(attn, n, None), nn.Module)), None)
        if norm is None and any("norm" in name for name, _ in attn.named_children()):
            self.missing[f"q_norm {layer}"] = (
                f"layer {layer}'s attention has a norm but none named {'/'.join(Q_NORM_NAMES)}"
            )
        self.q_norm.append(norm)

    # ------------------------------------------------------------------ access
    def need(self, piece: str, layer: int | None = None) -> Any:
        """The discovered ``piece`` (``attn``, ``out_proj``, ``qkv``, ``lm_head``), or NotChecked."""
        if piece == "lm_head":
            if self.lm_head is None:
                raise NotChecked(self.missing["lm_head"])
            return self.lm_head
        assert layer is not None
        value = getattr(self, piece)[layer]
        if value is None:
            raise NotChecked(self.missing.get(f"attention {layer}", f"no {piece} at layer {layer}"))
        return value

    def has_q_norm(self, layer: int) -> bool:
        """Whether queries pass through a norm after the projection (raises if one is unnamed)."""
        if f"q_norm {layer}" in self.missing:
            raise NotChecked(self.missing[f"q_norm {layer}"])
        return self.q_norm[layer] is not None

    def position_embedding(self) -> torch.Tensor | None:
        """Row 0 of a learned position embedding (GPT-2's ``wpe``), or None if the model has none.

        Raises:
            NotChecked: more than one candidate.
        """
        cands = [
            m for m in self.hf.modules()
            if type(m) is nn.Embedding and m is not self.embed and m.embedding_dim == self.d_model
        ]
        if len(cands) > 1:
            raise NotChecked(f"{len(cands)} candidate position embeddings")
        return cands[0].weight[0].detach() if cands else None

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device
