"""The intervention protocol and the hooked run: the seam where every edit of activations is
installed (the tracer, the patching engine and :mod:`headscope.interventions` all go through it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


class Intervention(Protocol):
    """Something that edits activations during a forward pass.

    ``prepare(model)`` runs once before the forward passes (e.g. to compute mean activations);
    ``hooks(model, batch_slice)`` returns ``(hook alias, fn)`` pairs for one chunk of the batch,
    where ``batch_slice`` selects the chunk's rows in any per-example source tensors.
    ``describe()`` returns a JSON-able record for provenance.
    """

    def prepare(self, model: Any) -> None: ...

    def hooks(self, model: Any, batch_slice: slice) -> list[tuple[str, HookFn]]: ...

    def describe(self) -> dict[str, Any]: ...


def intervention_hooks(model: Any, interventions: Sequence[Intervention], batch_slice: slice) -> list[tuple[str, HookFn]]:
    """All hooks of several interventions for one chunk (in order)."""
    out: list[tuple[str, HookFn]] = []
    for iv in interventions:
        out.extend(iv.hooks(model, batch_slice))
    return out


def run_with_interventions(
    model: Any,
    tokens: torch.Tensor,
    interventions: Sequence[Intervention],
    batch_size: int | None = None,
    positions: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward ``tokens`` with the interventions applied and return logits.

    Args:
        model: a :class:`headscope.models.Model`.
        tokens: (batch, pos).
        interventions: applied in order.
        batch_size: chunk size (default one chunk).
        positions: optional (batch,) position per row; if given, return only the logits there,
            (batch, d_vocab), instead of (batch, pos, d_vocab).
        attention_mask: optional (batch, pos) padding mask.
    """
    for iv in interventions:
        iv.prepare(model)
    n = int(tokens.shape[0])
    step = batch_size or n
    outs: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, n, step):
            sl = slice(start, min(n, start + step))
            kwargs: dict[str, Any] = {}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask[sl].to(model.device)
            logits = model.bridge.run_with_hooks(
                tokens[sl].to(model.device),
                fwd_hooks=intervention_hooks(model, interventions, sl),
                **kwargs,
            )
            if positions is not None:
                rows = torch.arange(logits.shape[0], device=logits.device)
                logits = logits[rows, positions[sl].to(logits.device)]
            outs.append(logits.detach())
    return torch.cat(outs)
