"""Checking the ``tokens`` handed to :func:`headscope.trace`: one-line errors instead of an
embedding lookup failing deep inside the model."""

from __future__ import annotations

from typing import Any

import torch

from headscope.errors import HeadscopeError

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_tokens(model: Any, tokens: Any) -> None:
    """Raise unless ``tokens`` is an integer tensor (batch, pos) of ids in the model's vocabulary."""
    hint = "pass token ids as a LongTensor (batch, pos), e.g. model.to_tokens(\"some text\")"
    if not isinstance(tokens, torch.Tensor):
        raise HeadscopeError(f"tokens must be a tensor, not {type(tokens).__name__}: {hint}.")
    if tokens.dtype not in _INT_DTYPES:
        raise HeadscopeError(f"tokens must hold integer token ids, not {str(tokens.dtype).replace('torch.', '')}: {hint}.")
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise HeadscopeError(f"tokens must be (batch, pos) with pos >= 1; got shape {tuple(tokens.shape)}: {hint}.")
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if tokens.numel() and vocab is not None:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= int(vocab):
            bad = lo if lo < 0 else hi
            raise HeadscopeError(f"token id {bad} is outside {getattr(model, 'spec', 'the model')}'s vocabulary "
                                 f"(0..{int(vocab) - 1}): {hint}.")
