"""Single-token words that survive a text round trip, for random-token tasks.

Random tokens drawn from the whole vocabulary rarely form text that tokenizes back to the same
ids. Drawing from whole-word tokens (``" cat"`` in byte-level BPE, ``"Monday"`` in a
word-level vocabulary) makes every sequence representable as a string, so results can be
compared exactly with string-based tools such as TransformerLens ``detect_head``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import torch

_WORD_WITH_SPACE = re.compile(r"^ [A-Za-z]{3,12}$")
_BARE_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,11}$")


@lru_cache(maxsize=8)
def _pool(tokenizer: Any) -> tuple[int, ...]:
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    for pattern in (_WORD_WITH_SPACE, _BARE_WORD):
        cands = [(i, t) for i, t in zip(ids, texts, strict=True) if pattern.match(t)]
        if len(cands) < 16:
            continue
        enc = tokenizer([t for _, t in cands], add_special_tokens=False)["input_ids"]
        pool = tuple(i for (i, _), e in zip(cands, enc, strict=True) if list(e) == [i])
        if len(pool) >= 16:
            return pool
    return ()


def word_token_pool(tokenizer: Any) -> torch.Tensor:
    """Ids of whole-word tokens that re-tokenize to themselves: LongTensor (n_words,)."""
    return torch.tensor(_pool(tokenizer), dtype=torch.long)


def round_trips(tokenizer: Any, ids: list[int]) -> bool:
    """True if ``decode(ids)`` tokenizes back to exactly ``ids``."""
    text = tokenizer.decode(ids)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) == list(ids)
