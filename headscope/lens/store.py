"""Trained per-head lenses (Sakarvadia et al. 2023, "Attention Lens"): parameters, logits, safetensors I/O.

A lens maps one head's output ``r`` (d_model) to vocabulary logits. Its input is the head vector
normalised like the training-free lens's ``residual`` convention, ``x = r / s`` (``s`` the
residual's final-norm scale at that position; LayerNorm: ``r`` centred first), so that at
initialisation the trained lens *is* the training-free lens. Parameterisations (``PARAMS``):

- ``full``: ``logits = x @ M_h + b_h`` with ``M_h`` (d_model, d_vocab) initialised to the
  unembedding ``W_U`` with the final norm's weight folded in, and ``b_h = 0`` -- the paper's
  per-head linear map;
- ``factored`` (default; cheap on CPU): ``logits = (x @ A_h + c_h) @ W'_U + b_h`` with
  ``A_h = I`` (d_model, d_model), ``c_h = 0`` and ``b_h = 0`` at init and ``W'_U`` frozen. Still
  an affine map d_model -> vocab initialised from the unembedding, with d_model^2 + d_model +
  d_vocab parameters per head instead of d_model * d_vocab.

Files: one ``.safetensors`` with tensors ``"{L}.{H}.{A|c|b|M}"`` and string metadata
(``format``, ``param``, ``heads``, ``model_spec``, ``weights_sha256``, training settings and the
measured held-out KLs). ``W'_U`` is not stored: it is rebuilt from the model, whose weights hash
must match the file's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.lens.core import normalise, unembed

FORMAT = "headscope-head-lens-v1"
PARAMS: tuple[str, ...] = ("factored", "full")
Head = tuple[int, int]


def head_key(head: Head) -> str:
    """``"L.H"``."""
    return f"{head[0]}.{head[1]}"


class HeadLens(torch.nn.Module):
    """Trainable lenses for a list of heads (see the module docstring)."""

    def __init__(self, model: Any, heads: Sequence[Head], param: str = "factored") -> None:
        super().__init__()
        if param not in PARAMS:
            raise HeadscopeError(f"unknown lens parameterisation '{param}': choose {', '.join(PARAMS)}.")
        if not heads:
            raise HeadscopeError("a lens needs at least one head: e.g. --heads 18.6.")
        for layer, head in heads:
            model.check_head(layer, head)
        self.model = model
        self.heads = [(int(a), int(b)) for a, b in heads]
        self.param = param
        self.register_buffer("w_u", unembed(model), persistent=False)  # (d_model, d_vocab)
        d, v = self.w_u.shape
        self.params = torch.nn.ParameterDict()
        for h in self.heads:
            k = head_key(h).replace(".", "_")
            if param == "full":
                self.params[f"{k}_M"] = torch.nn.Parameter(self.w_u.clone())
            else:
                self.params[f"{k}_A"] = torch.nn.Parameter(torch.eye(d))
                self.params[f"{k}_c"] = torch.nn.Parameter(torch.zeros(d))
            self.params[f"{k}_b"] = torch.nn.Parameter(torch.zeros(v))
        self.metadata: dict[str, str] = {}

    def head_logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of head ``self.heads[i]`` for normalised inputs ``x`` (..., d_model)."""
        k = head_key(self.heads[i]).replace(".", "_")
        if self.param == "full":
            return x @ self.params[f"{k}_M"] + self.params[f"{k}_b"]
        return (x @ self.params[f"{k}_A"] + self.params[f"{k}_c"]) @ self.w_u + self.params[f"{k}_b"]

    def logits(self, vectors: torch.Tensor, scale: torch.Tensor, heads: Sequence[Head] | None = None) -> torch.Tensor:
        """Lens logits of raw head vectors (..., n_heads, d_model) with residual scale (..., 1).

        ``heads`` names the heads along the head axis (default: this lens's heads).
        """
        heads = list(self.heads if heads is None else heads)
        missing = [head_key(h) for h in heads if h not in self.heads]
        if missing:
            raise HeadscopeError(f"this lens has no head {missing[0]} (it has {', '.join(map(head_key, self.heads))}).")
        x = normalise(self.model, vectors, "residual", scale.unsqueeze(-2) if scale.ndim == vectors.ndim - 1 else scale)
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
            "d_model": str(self.w_u.shape[0]), "d_vocab": str(self.w_u.shape[1]), "ln": "residual",
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
    lens = HeadLens(model, heads, meta["param"])
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
