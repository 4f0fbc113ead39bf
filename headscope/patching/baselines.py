"""The clean-vs-corrupted gap every patching score is normalised by, checked before it is used.

Activation, path and attribution patching divide by ``clean - corrupted`` of the prompt-mean
metric. When the two runs give the same metric (answer == wrong token, corrupted prompts equal to
the clean ones, or a corruption the model ignores) that division yields NaN or +-inf for every
head; :func:`check_gap` says so in one line instead. The patching sweeps call it before they
start (except when clean and corrupted tokens are identical: deliberate self-patching, whose raw
values are still useful) and every ``normalized()`` calls it before dividing.
"""

from __future__ import annotations

import torch

from headscope.errors import HeadscopeError


def check_gap(clean: torch.Tensor, corrupted: torch.Tensor, rel_tol: float = 1e-6) -> None:
    """Raise unless the prompt-mean metrics of the clean and corrupted runs differ.

    Args:
        clean, corrupted: (n,) per-prompt metric values (e.g. logit differences at END).
        rel_tol: gaps below ``rel_tol * max(1, |clean|, |corrupted|)`` count as equal.
    """
    c, r = float(clean.float().mean()), float(corrupted.float().mean())
    if c != c or r != r:
        raise HeadscopeError(
            f"the clean or corrupted metric is NaN (clean {c}, corrupted {r}): check the task's answers and the model's dtype."
        )
    if abs(c - r) <= rel_tol * max(1.0, abs(c), abs(r)):
        raise HeadscopeError(
            f"the clean and corrupted prompts give the same mean metric ({c:.6g}): patching scores, normalised by "
            "(clean - corrupted), would divide by zero. Make the corrupted prompts change the answer, and check "
            "that each row's answer and wrong tokens differ."
        )


def check_layers(layers: list[int] | None, n_layers: int, name: str = "layers") -> None:
    """Raise unless every layer index is in ``0..n_layers-1``."""
    bad = [layer for layer in layers or [] if not 0 <= int(layer) < n_layers]
    if bad:
        raise HeadscopeError(f"{name} {bad[0]} is out of range: the model has layers 0..{n_layers - 1} (e.g. -o {name}=[0,1]).")
