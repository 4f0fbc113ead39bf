"""Capture residual-stream and final-norm activations (not per-head), with interventions.

The per-head tracer (:mod:`headscope.trace.tracer`) serves q/k/v/z/scores/pattern. Some
analyses also need a few whole-model vectors: the last layer's residual (Zhou et al. 2024's
Sahara reads the last-layer, last-token representation) and the final norm's scale (the
per-head logit lens divides a head's output by the residual's norm scale). This module owns
those hooks, so analyzers still never hook the model themselves.

Names (bridge aliases): ``blocks.L.hook_resid_pre|mid|post``, ``ln_final.hook_scale``
(batch, pos, 1), ``ln_final.hook_normalized`` (batch, pos, d_model). ``"logits"`` is also
accepted and returns the model's output logits; without it the forward pass stops as soon as
every named hook has fired (later blocks and the unembedding are skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.trace.hooks import intervention_hooks


def capture_stream(
    model: Any,
    tokens: torch.Tensor,
    names: Sequence[str],
    interventions: Sequence[Any] = (),
    batch_size: int | None = None,
    positions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Forward ``tokens`` (with ``interventions``) and return the named activations.

    Args:
        model: a :class:`headscope.models.Model`.
        tokens: (batch, pos).
        names: bridge hook aliases (see the module docstring) and/or ``"logits"``.
        interventions: applied during the forward pass, in order.
        batch_size: chunk size (default one chunk).
        positions: optional (batch,) position per row: return only that position,
            (batch, ...) instead of (batch, pos, ...).

    Returns:
        name -> tensor on the CPU, float32.
    """
    for iv in interventions:
        iv.prepare(model)
    wanted = [n for n in names if n != "logits"]
    n = int(tokens.shape[0])
    step = batch_size or n
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    # Without logits, end the pass once every wanted hook has fired (skips the unembedding).
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    stop_early = "logits" not in names

    def pick(t: torch.Tensor, sl: slice) -> torch.Tensor:
        if positions is None:
            return t.detach().float().cpu()
        rows = torch.arange(t.shape[0], device=t.device)
        return t[rows, positions[sl].to(t.device)].detach().float().cpu()

    with torch.inference_mode():
        for start in range(0, n, step):
            sl = slice(start, min(n, start + step))
            got: dict[str, torch.Tensor] = {}

            def make(name: str, got: dict[str, torch.Tensor] = got):  # noqa: ANN202 - bridge hook signature
                def hook(t: torch.Tensor, hook: Any) -> None:
                    got[name] = t
                    if stop_early and len(got) == len(wanted):
                        raise StopAtLayerException(None)

                return hook

            hooks = intervention_hooks(model, interventions, sl) + [(name, make(name)) for name in wanted]
            logits = model.bridge.run_with_hooks(
                tokens[sl].to(model.device), fwd_hooks=hooks, return_type=None if stop_early else "logits"
            )
            missing = [name for name in wanted if name not in got]
            if missing:
                raise HeadscopeError(f"hook(s) {missing} did not fire on {model.spec}: check the names.")
            for name in wanted:
                out[name].append(pick(got[name], sl))
            if "logits" in names:
                out["logits"].append(pick(logits, sl))
    return {name: torch.cat(parts) for name, parts in out.items()}
