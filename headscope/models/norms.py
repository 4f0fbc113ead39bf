"""The model's real normalisation layers, as exact formulas that linear decompositions can use.

Linear analyses (direct logit attribution, the per-head logit lens, OV circuits) freeze a
norm's scale and apply its elementwise part to each component. That part is not always the
module's ``weight``: Gemma's RMSNorm stores an offset and multiplies by ``1 + weight``
(``Gemma2RMSNorm.forward`` in transformers), LayerNorm also centres. Reading ``weight`` blindly
gave a whole-residual DLA of 0.118 against a true logit difference of 0.345 on a tiny Gemma.

:func:`norm_spec` therefore reads the module's parameters, tries the known forms (RMSNorm or
LayerNorm; weight ``w`` or ``1 + w``) and keeps the one that reproduces the module's own output
on probe vectors. A norm that matches no form is refused (one line naming the architecture),
never approximated.

A :class:`NormSpec` computes, for ``x`` (..., d_model)::

    apply(x)  = linear(x) / scale(x) + bias
    linear(x) = centre(x) * weight         (the norm's linear part, scale frozen at 1, no bias)
    scale(x)  = sqrt(mean(centre(x)^2) + eps)   (..., 1)

where ``centre`` subtracts the mean for LayerNorm and is the identity for RMSNorm.

Block norms use the bridge's names: ``ln1`` (before attention), ``ln1_post`` (after attention,
before the residual add: Gemma-2/3 sandwich norms, OLMo-2), ``ln2`` (before the MLP) and
``ln2_post`` (after the MLP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headscope.models.config import UnsupportedArchitectureError, architecture

BLOCK_NORMS: tuple[str, ...] = ("ln1", "ln1_post", "ln2", "ln2_post")


@dataclass(frozen=True)
class NormSpec:
    """An RMSNorm or LayerNorm as an exact formula (float32, on the module's device).

    Attributes:
        weight: (d_model,) effective elementwise weight (``1 + w`` for offset norms; ones if
            the norm has no weight).
        bias: (d_model,) or None.
        centred: LayerNorm (subtracts the mean) rather than RMSNorm.
        eps: added to the mean square before the square root.
        form: a human-readable name of the form, e.g. ``"RMSNorm, 1 + weight"``.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    centred: bool
    eps: float
    form: str

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centred else x

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's divisor for each vector of ``x``: (..., d_model) -> (..., 1)."""
        c = self.centre(x.float())
        return torch.sqrt(c.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's linear part (scale frozen at 1, bias dropped): (..., d) -> (..., d)."""
        return self.centre(x.float()) * self.weight.to(x.device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The whole norm, equal to the module's output (checked when the spec is built)."""
        out = self.linear(x) / self.scale(x)
        return out if self.bias is None else out + self.bias.to(x.device)


def _inner(module: Any) -> Any:
    return getattr(module, "original_component", None) or getattr(module, "_original_component", None) or module


def _eps(inner: Any) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(inner, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-6


def _probe(d: int, device: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(4, d, generator=g) * 2.0 + torch.linspace(-1.0, 3.0, 4).unsqueeze(1)
    return x.to(device)


def norm_spec(model: Any, module: Any, what: str) -> NormSpec:
    """The :class:`NormSpec` that reproduces ``module`` (a bridge norm component or HF norm).

    Args:
        what: what the norm is, for the refusal message (e.g. ``"the final norm"``).

    Raises:
        UnsupportedArchitectureError: no known form reproduces the module.
    """
    inner = _inner(module)
    w = getattr(inner, "weight", None)
    b = getattr(inner, "bias", None)
    d = int(w.shape[-1]) if isinstance(w, torch.Tensor) else int(model.d_model)
    device = w.device if isinstance(w, torch.Tensor) else torch.device("cpu")
    dtype = w.dtype if isinstance(w, torch.Tensor) else torch.float32
    x = _probe(d, device)
    with torch.inference_mode():
        want = inner(x.to(dtype)).float()
    w32 = None if w is None else w.detach().float()
    b32 = None if b is None else b.detach().float()
    eps = _eps(inner)
    rtol = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    forms = [(centred, offset) for centred in (False, True) for offset in ((False, True) if w32 is not None else (False,))]
    for centred, offset in forms:
        weight = torch.ones(d, device=device) if w32 is None else (1.0 + w32 if offset else w32)
        spec = NormSpec(weight, b32, centred, eps, _form_name(centred, offset, w32 is None))
        got = spec.apply(x)
        if torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max())):
            return spec
    raise UnsupportedArchitectureError(
        f"{architecture(model)}: {what} ({type(inner).__name__}) is neither an RMSNorm nor a "
        "LayerNorm of a known form, so it cannot be linearised exactly."
    )


def _form_name(centred: bool, offset: bool, no_weight: bool) -> str:
    kind = "LayerNorm" if centred else "RMSNorm"
    if no_weight:
        return f"{kind}, no weight"
    return f"{kind}, 1 + weight" if offset else f"{kind}, weight"


def final_norm(model: Any) -> NormSpec:
    """The final norm (before the unembedding) as a :class:`NormSpec`."""
    return _cached(model, "ln_final", lambda: norm_spec(model, model.bridge.ln_final, "the final norm"))


def block_norm(model: Any, layer: int, name: str) -> NormSpec | None:
    """Block ``layer``'s norm ``name`` (one of :data:`BLOCK_NORMS`), or None if it has none."""
    if name not in BLOCK_NORMS:
        raise ValueError(f"unknown block norm {name!r}; choose from {BLOCK_NORMS}")
    block = model.bridge.blocks[layer]
    if name not in dict(block.named_children()):
        return None
    module = getattr(block, name)
    return _cached(model, f"{layer}.{name}", lambda: norm_spec(model, module, f"block {layer}'s {name}"))


def _cached(model: Any, key: str, build: Any) -> NormSpec:
    store = model.__dict__.setdefault("_norm_specs", {})
    if key not in store:
        store[key] = build()
    return store[key]
