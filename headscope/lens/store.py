"""Trained per-head lenses (Sakarvadia et al. 2023, "Attention Lens"): parameters, logits, safetensors I/O.

A lens maps one head's output ``r`` (d_model; the head's write ``z_h @ W_O^h``, TransformerLens's
``hook_result``) to vocabulary logits. Its input (``INPUTS``) is

- ``scaled`` (default): ``x = centre(r) / s``, ``s`` the residual's final-norm scale at that
  position (the training-free lens's ``residual`` convention), so that at initialisation the
  factored lens *is* the training-free lens;
- ``raw`` (the paper's): ``x = centre(r)``. The reference feeds TransformerLens's
  ``hook_result`` unchanged (``attention_lens/train/lightning_lens.py`` @1cefad7, ``forward``:
  ``cache[hook_id]`` with ``hook_id = get_act_name("result", layer)``); ``centre`` subtracts the
  mean on LayerNorm models only, where TransformerLens's default ``center_writing_weights``
  makes ``hook_result`` zero-mean already (identity on RMSNorm models).

Parameterisations (``PARAMS``):

- ``full`` (the paper's): ``logits = x @ M_h + b_h`` with ``M_h`` (d_model, d_vocab)
  initialised to the unembedding ``W_U`` with the final norm's weight folded in and ``b_h`` to
  ``b_U`` with the final norm's bias folded in (:func:`headscope.lens.core.unembed_bias`), one
  map per head: ``LensA`` in ``attention_lens/lens/registry/lensA.py`` (``nn.Linear(d_model,
  d_vocab)`` per head, ``weight = unembed.T``, ``bias = bias``, with ``unembed = W_U`` and
  ``bias = b_U`` of a ``fold_ln`` HookedTransformer);
- ``factored`` (default; cheap on CPU): ``logits = (x @ A_h + c_h) @ W'_U + b_h`` with
  ``A_h = I`` (d_model, d_model), ``c_h = 0`` and ``b_h = 0`` at init and ``W'_U`` frozen. Still
  an affine map d_model -> vocab initialised from the unembedding, with d_model^2 + d_model +
  d_vocab parameters per head instead of d_model * d_vocab.

Objectives (``OBJECTIVES``): ``head`` (default) scores each head's logits alone; ``layer_sum``
(the paper's) sums the logits of the lens's heads in each layer, as ``LensA.forward`` sums its
``n_head`` outputs (``summed_output = output_tensors.sum(dim=2)``), so each head's map is
trained only through its layer's sum.

Files: one ``.safetensors`` with tensors ``"{L}.{H}.{A|c|b|M}"`` and string metadata
(``format``, ``param``, ``inputs``, ``objective``, ``heads``, ``model_spec``, ``weights_sha256``,
training settings and the measured held-out KLs). ``W'_U`` is not stored: it is rebuilt from the
model, whose weights hash must match the file's. Files without ``inputs``/``objective`` are read
as ``scaled``/``head`` (the only settings before these options existed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.lens.core import normalise, unembed, unembed_bias
from headscope.models.norms import final_norm

FORMAT = "headscope-head-lens-v1"
PARAMS: tuple[str, ...] = ("factored", "full")
INPUTS: tuple[str, ...] = ("scaled", "raw")
OBJECTIVES: tuple[str, ...] = ("head", "layer_sum")
Head = tuple[int, int]


def head_key(head: Head) -> str:
    """``"L.H"``."""
    return f"{head[0]}.{head[1]}"


class HeadLens(torch.nn.Module):
    """Trainable lenses for a list of heads (see the module docstring)."""

    def __init__(self, model: Any, heads: Sequence[Head], param: str = "factored", inputs: str = "scaled",
                 objective: str = "head") -> None:
        super().__init__()
        self.check_options(param, inputs, objective)
        if not heads:
            raise HeadscopeError("a lens needs at least one head: e.g. --heads 18.6.")
        for layer, head in heads:
            model.check_head(layer, head)
        self.model = model
        self.heads = [(int(a), int(b)) for a, b in heads]
        if len(set(self.heads)) != len(self.heads):
            raise HeadscopeError("a head is named twice: name each head once.")
        self.param = param
        self.inputs = inputs
        self.objective = objective
        self.register_buffer("w_u", unembed(model), persistent=False)  # (d_model, d_vocab)
        d, v = self.w_u.shape
        b_u = unembed_bias(model)  # (d_vocab,)
        self.params = torch.nn.ParameterDict()
        for h in self.heads:
            k = head_key(h).replace(".", "_")
            if param == "full":
                self.params[f"{k}_M"] = torch.nn.Parameter(self.w_u.clone())
                self.params[f"{k}_b"] = torch.nn.Parameter(b_u.clone())
            else:
                self.params[f"{k}_A"] = torch.nn.Parameter(torch.eye(d))
                self.params[f"{k}_c"] = torch.nn.Parameter(torch.zeros(d))
                self.params[f"{k}_b"] = torch.nn.Parameter(torch.zeros(v))
        self.metadata: dict[str, str] = {}

    @staticmethod
    def check_options(param: str, inputs: str, objective: str) -> None:
        """One-line errors for unknown parameterisations, inputs or objectives."""
        for name, value, allowed in (("parameterisation", param, PARAMS), ("input", inputs, INPUTS),
                                     ("objective", objective, OBJECTIVES)):
            if value not in allowed:
                raise HeadscopeError(f"unknown lens {name} '{value}': choose {', '.join(allowed)}.")

    def head_logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of head ``self.heads[i]`` for lens inputs ``x`` (..., d_model)."""
        k = head_key(self.heads[i]).replace(".", "_")
        if self.param == "full":
            return x @ self.params[f"{k}_M"] + self.params[f"{k}_b"]
        return (x @ self.params[f"{k}_A"] + self.params[f"{k}_c"]) @ self.w_u + self.params[f"{k}_b"]

    def prepare(self, raw: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Lens inputs from raw head writes (..., d_model) and residual scales broadcastable to (..., 1)."""
        if self.inputs == "raw":
            return final_norm(self.model).centre(raw.float())
        return normalise(self.model, raw, "residual", scale)

    def groups(self) -> list[tuple[str, list[int]]]:
        """The objective's units: ``[(name, indices into self.heads)]``; one per head (``"L.H"``) for
        ``objective="head"``, one per layer (``"L"``) for ``layer_sum``."""
        if self.objective == "head":
            return [(head_key(h), [i]) for i, h in enumerate(self.heads)]
        layers = sorted({h[0] for h in self.heads})
        return [(str(layer), [i for i, h in enumerate(self.heads) if h[0] == layer]) for layer in layers]

    def group_logits(self, members: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """Summed logits of heads ``members`` for inputs ``x`` (n, n_heads, d_model) -> (n, d_vocab)."""
        out = self.head_logits(members[0], x[:, members[0]])
        for i in members[1:]:
            out = out + self.head_logits(i, x[:, i])
        return out

    def logits(self, vectors: torch.Tensor, scale: torch.Tensor, heads: Sequence[Head] | None = None) -> torch.Tensor:
        """Lens logits of raw head vectors (..., n_heads, d_model) with residual scale (..., 1).

        ``heads`` names the heads along the head axis (default: this lens's heads).
        """
        heads = list(self.heads if heads is None else heads)
        missing = [head_key(h) for h in heads if h not in self.heads]
        if missing:
            raise HeadscopeError(f"this lens has no head {missing[0]} (it has {', '.join(map(head_key, self.heads))}).")
        x = self.prepare(vectors, scale.unsqueeze(-2) if scale.ndim == vectors.ndim - 1 else scale)
        with torch.inference_mode():
            return torch.stack([self.head_logits(self.heads.index(h), x[..., j, :]) for j, h in enumerate(heads)], dim=-2)

    # ------------------------------------------------------------------ files
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for safetensors, keyed ``"L.H.X"``."""
        out = {}
        for name, p in self.params.items():
            layer, head, kind = name.split("_")
            out[f"{layer}.{head}.{kind}"] = p.detach().contiguous().cpu()
        return out

    def file_metadata(self, extra: dict[str, Any] | None = None) -> dict[str, str]:
        """String metadata for the file."""
        meta = {
            "format": FORMAT, "param": self.param, "heads": ",".join(map(head_key, self.heads)),
            "model_spec": str(self.model.spec), "weights_sha256": str(getattr(self.model, "weights_hash", "")),
            "d_model": str(self.w_u.shape[0]), "d_vocab": str(self.w_u.shape[1]), "inputs": self.inputs,
            "objective": self.objective,
        }
        meta.update(self.metadata)
        for k, v in (extra or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v)
        return meta

    def save(self, path: str | Path, extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write a .safetensors file atomically (tensors, optional extra tensors, metadata)."""
        from safetensors.torch import save_file

        from headscope.results.atomic import atomic_write

        p = Path(path).expanduser()
        if p.suffix != ".safetensors":
            raise HeadscopeError(f"lens file {p} should end in .safetensors.")
        with atomic_write(p) as tmp:
            save_file({**self.state_tensors(), **(extra_tensors or {})}, str(tmp), metadata=self.file_metadata(extra_meta))
        return p


def read_lens_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a lens/checkpoint file."""
    from safetensors import safe_open

    meta = read_lens_metadata(path)
    p = Path(path).expanduser()
    try:
        with safe_open(str(p), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise HeadscopeError(f"{p} is not a readable lens file ({_first_line(exc)}): it may be truncated; "
                             "retrain it or point to another file.") from None
    return tensors, meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def read_lens_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a lens/checkpoint file (reads the header only), checked to be a headscope lens."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise HeadscopeError(f"lens file {p} does not exist: train one with `headscope lens train`.")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise HeadscopeError(f"{p} is not a readable lens file ({_first_line(exc)}): it may be truncated or not "
                             "a .safetensors file; retrain it or point to another file.") from None
    if meta.get("format") != FORMAT:
        raise HeadscopeError(f"{p} is not a headscope lens file (format {meta.get('format')!r}).")
    for key in ("heads", "param"):
        if key not in meta:
            raise HeadscopeError(f"{p} is not a complete headscope lens file: its metadata lacks '{key}'.")
    return meta


def load_lens(model: Any, path: str | Path) -> HeadLens:
    """Rebuild a :class:`HeadLens` for ``model`` from a file (checks the weights hash)."""
    tensors, meta = read_lens_file(path)
    want = meta.get("weights_sha256", "")
    have = str(getattr(model, "weights_hash", ""))
    if want and have and want != have:
        raise HeadscopeError(f"lens {path} was trained on {meta.get('model_spec')} ({want[:12]}), not {model.spec} ({have[:12]}).")
    for key, have_dim in (("d_model", model.d_model),):
        if key in meta and str(meta[key]) != str(have_dim):
            raise HeadscopeError(f"lens {path} was trained on {meta.get('model_spec')} ({key} {meta[key]}), "
                                 f"not {model.spec} ({key} {have_dim}): use a lens trained on this model.")
    heads = model.parse_heads(meta["heads"])
    lens = HeadLens(model, heads, meta["param"], meta.get("inputs", "scaled"), meta.get("objective", "head"))
    with torch.no_grad():
        for name, p in lens.params.items():
            layer, head, kind = name.split("_")
            stored = tensors.get(f"{layer}.{head}.{kind}")
            if stored is None or stored.shape != p.shape:
                raise HeadscopeError(f"lens {path} lacks a well-formed tensor {layer}.{head}.{kind}: the file is "
                                     "damaged or from another model; retrain it.")
            p.copy_(stored)
    lens.metadata = {k: v for k, v in meta.items() if k not in ("format",)}
    return lens
