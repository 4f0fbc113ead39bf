"""Decode heads' outputs to tokens: tidy frames of promoted and suppressed tokens per head.

``decode_heads`` runs one prompt, takes the chosen heads' outputs at the chosen positions and
maps them to vocabulary logits with either the training-free lens (:mod:`headscope.lens.core`)
or a trained :class:`~headscope.lens.store.HeadLens`. The result is a tidy ``pandas``
DataFrame with one row per (layer, head, position, direction, rank)::

    layer, head, position, direction ("promoted" | "suppressed"), rank (0 = strongest),
    token (decoded text), token_id, logit, input_token (the token at that position), lens

``promoted`` rows are the top-k logits, ``suppressed`` rows the bottom-k (most negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from headscope.errors import HeadscopeError
from headscope.lens.core import head_vectors, lens_logits

Head = tuple[int, int]
COLUMNS = ("layer", "head", "position", "direction", "rank", "token", "token_id", "logit", "input_token", "lens")


def resolve_positions(n_tokens: int, positions: Sequence[int] | None) -> list[int]:
    """Positions as non-negative indices (negatives count from the end; default: all)."""
    if positions is None:
        return list(range(n_tokens))
    out = []
    for p in positions:
        q = p + n_tokens if p < 0 else p
        if not 0 <= q < n_tokens:
            raise HeadscopeError(f"position {p} is outside the prompt's {n_tokens} tokens: use 0..{n_tokens - 1} or -1.")
        out.append(q)
    return out


def top_token_frame(
    model: Any,
    logits: torch.Tensor,
    heads: Sequence[Head],
    positions: Sequence[int],
    input_ids: Sequence[int],
    k: int,
    lens: str,
) -> pd.DataFrame:
    """Tidy top-/bottom-k frame from lens logits (n_pos, n_heads, d_vocab)."""
    if k < 1:
        raise HeadscopeError("k must be at least 1: e.g. --k 10.")
    rows: list[dict[str, Any]] = []
    top = logits.topk(k, dim=-1)
    bottom = (-logits).topk(k, dim=-1)
    decode = model.tokenizer.decode
    for i, pos in enumerate(positions):
        for j, (layer, head) in enumerate(heads):
            for direction, vals, ids, sign in (("promoted", top.values, top.indices, 1.0), ("suppressed", bottom.values, bottom.indices, -1.0)):
                for rank in range(k):
                    tid = int(ids[i, j, rank])
                    rows.append({
                        "layer": int(layer), "head": int(head), "position": int(pos), "direction": direction,
                        "rank": rank, "token": decode([tid]), "token_id": tid, "logit": sign * float(vals[i, j, rank]),
                        "input_token": decode([int(input_ids[pos])]), "lens": lens,
                    })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def decode_heads(
    model: Any,
    prompt: str | torch.Tensor,
    heads: Sequence[Head],
    positions: Sequence[int] | None = (-1,),
    k: int = 10,
    ln: str = "residual",
    lens: Any | None = None,
) -> pd.DataFrame:
    """Top promoted/suppressed tokens of each head's output at ``positions`` of one prompt.

    Args:
        prompt: text (tokenized with the model's default BOS) or tokens (1, pos).
        heads: heads as (layer, head).
        positions: positions to decode (negatives from the end; None = all).
        k: tokens per direction.
        ln: final-norm convention of the training-free lens (``residual`` or ``recompute``).
        lens: a trained :class:`~headscope.lens.store.HeadLens`; if given it decodes the heads
            it holds (every requested head must be in it) instead of the training-free lens.

    Returns:
        The tidy frame described in the module docstring.
    """
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise HeadscopeError("decode one prompt at a time: tokens must be (1, pos).")
    pos = resolve_positions(int(tokens.shape[1]), positions)
    vecs, scale = head_vectors(model, tokens, heads, torch.tensor(pos))
    if lens is None:
        logits = lens_logits(model, vecs[0], scale[0], ln)
        name = f"logit_lens[{ln}]"
    else:
        logits = lens.logits(vecs[0], scale[0], heads)
        name = "trained_lens"
    return top_token_frame(model, logits, heads, pos, tokens[0].tolist(), k, name)
