"""Check KV-cached decoding against a full recompute, once per run.

Incremental decoding hands the model only the new tokens plus a Hugging Face KV cache. When a
library release changes how the cache travels (transformers 5.24 renamed ``past_key_values``
to ``cache``; see :mod:`headscope.models.compat`), the cached steps can silently attend to the
new tokens alone and every decoded answer is garbage, while full forwards stay right.

The tracer therefore remembers the token history of every cache it hands out
(:func:`remember_history`) and, for the first :data:`CHECKED_STEPS` cached steps a model takes,
recomputes the whole sequence without the cache, under the same interventions, and compares
the logits of the new positions (:func:`verify_cached_step`). A mismatch stops the run with one
line naming the architecture and the library versions. Caches built outside the tracer carry
no history and are not checked.

Tolerance: ``max |cached - full| <= rtol * max(1, max |full|)`` with ``rtol`` 1e-4 in float32
and 2e-2 in bfloat16/float16 (measured float32 differences are ~1e-6 of the logit scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headscope.errors import HeadscopeError

CHECKED_STEPS = 2
HISTORY_ATTR = "_headscope_history"


class DecodingMismatchError(HeadscopeError):
    """Cached decoding disagrees with a full recompute."""


def history_of(cache: Any) -> torch.Tensor | None:
    """The (batch, n_past) tokens a tracer-made cache holds, or None."""
    return getattr(cache, HISTORY_ATTR, None)


def remember_history(cache: Any, past: torch.Tensor | None, tokens: torch.Tensor) -> None:
    """Record on ``cache`` the tokens it now holds: ``past`` (or nothing) then ``tokens``."""
    if cache is None:
        return
    toks = tokens.detach().cpu()
    if past is not None and past.shape[0] != toks.shape[0]:
        past = None  # batch changed under the cache: history unknown from here on
        setattr(cache, HISTORY_ATTR, None)
        return
    setattr(cache, HISTORY_ATTR, toks if past is None else torch.cat([past, toks], dim=1))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 2e-2


def verify_cached_step(
    model: Any,
    past: torch.Tensor,
    tokens: torch.Tensor,
    cached_logits: torch.Tensor,
    logit_positions: torch.Tensor | None,
    interventions: Sequence[Any],
) -> float:
    """Compare one cached step's logits with a full recompute of ``past + tokens``.

    Args:
        past: (batch, n_past) tokens already in the cache.
        tokens: (batch, n_new) tokens of this step.
        cached_logits: (batch, n_new, d_vocab), or (batch, 1, d_vocab) when ``logit_positions``
            (batch,) picked one new position per row.
        interventions: the step's interventions (they are applied to the recompute too).

    Returns:
        The largest absolute logit difference. Raises :class:`DecodingMismatchError` past the
        tolerance.
    """
    from headscope.trace.hooks import run_with_interventions

    full_tokens = torch.cat([past.to(tokens.device), tokens], dim=1)
    n_past = int(past.shape[1])
    if logit_positions is not None:
        pos = logit_positions.to(torch.long).cpu() + n_past
        full = run_with_interventions(model, full_tokens, list(interventions), positions=pos).unsqueeze(1)
    else:
        full = run_with_interventions(model, full_tokens, list(interventions))[:, n_past:]
    full = full.float().cpu()
    got = cached_logits.float().cpu()
    diff = float((got - full).abs().max())
    limit = _tolerance(model.dtype) * max(1.0, float(full.abs().max()))
    if not diff <= limit:
        from headscope.results.provenance import library_versions

        libs = library_versions()
        arch = type(model.bridge.original_model).__name__
        raise DecodingMismatchError(
            f"KV-cached decoding on {arch} disagrees with a full recompute (max |logit diff| "
            f"{diff:.3g} > {limit:.3g}) under transformers {libs['transformers']} and "
            f"transformer-lens {libs['transformer-lens']}: refusing to score it; install the "
            "versions in constraints.txt (`make setup`)."
        )
    return diff
