"""Seeded random prompts and a seeded sample of heads for ``headscope verify``.

Prompts are random non-special token ids (after BOS where the model prepends one), all of one
length ``p``: 10 tokens, or enough to run past a short sliding window (up to 32), never equal to
the number of heads (so a head axis is never ambiguous). The corrupted prompt of a row equals
the clean one on its first ``p // 3`` tokens (a shared prefix, as in real contrastive tasks)
and differs at one or more later positions. END, where the metric reads, is the last position
for even rows and two before it for odd rows, so position windows are exercised.

Heads: every head of a small model (at most :data:`ALL_HEADS_UP_TO` heads); otherwise two heads
in each of the first, middle and last layers, in different KV groups where there are several.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALL_HEADS_UP_TO = 16
BASE_LENGTH = 10
MAX_LENGTH = 32

Head = tuple[int, int]


@dataclass
class Prompts:
    """clean, corrupted: (n, p) token ids; end: (n,) metric positions."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    end: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])


def prompt_length(n_heads: int, n_kv: int, sliding_window: int | None, n_ctx: int, reserve: int) -> int:
    """The prompt length (see the module docstring), leaving ``reserve`` positions for decoding."""
    p = BASE_LENGTH
    if sliding_window and sliding_window + 4 > p:
        p = min(MAX_LENGTH, sliding_window + 4)
    while p in (n_heads, n_kv):
        p += 1
    return max(4, min(p, n_ctx - reserve))


def candidate_ids(tokenizer: object, vocab: int) -> torch.Tensor:
    """Token ids below ``vocab`` that are not special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(vocab) if i not in special]
    return torch.tensor(ids, dtype=torch.long)


def make_prompts(n: int, length: int, ids: torch.Tensor, bos: int | None, seed: int) -> Prompts:
    """``n`` seeded clean/corrupted pairs of ``length`` tokens drawn from ``ids``."""
    g = torch.Generator().manual_seed(seed)
    body = length - (bos is not None)
    clean = ids[torch.randint(len(ids), (n, body), generator=g)]
    start = max(1, body // 3)
    change = torch.rand(n, body, generator=g) < 0.5
    change[:, :start] = False
    last = max(start + 1, body - 2)  # exclusive: at or before the earliest END
    change[torch.arange(n), torch.randint(start, last, (n,), generator=g)] = True  # one change at least
    fresh = ids[torch.randint(len(ids), (n, body), generator=g)]
    fresh = torch.where(fresh == clean, ids[(torch.searchsorted(ids, clean) + 1) % len(ids)], fresh)
    corrupted = torch.where(change, fresh, clean)
    if bos is not None:
        col = torch.full((n, 1), bos, dtype=torch.long)
        clean, corrupted = torch.cat([col, clean], 1), torch.cat([col, corrupted], 1)
    end = torch.tensor([length - 1 - 2 * (i % 2) for i in range(n)], dtype=torch.long)
    return Prompts(clean, corrupted, end)


def sample_heads(n_layers: int, n_heads: int, n_kv: int, seed: int) -> list[Head]:
    """Heads to check (see the module docstring), sorted."""
    if n_layers * n_heads <= ALL_HEADS_UP_TO:
        return [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    g = torch.Generator().manual_seed(seed + 1)
    group = n_heads // n_kv
    heads: list[Head] = []
    for layer in sorted({0, n_layers // 2, n_layers - 1}):
        first = int(torch.randint(n_heads, (1,), generator=g))
        heads.append((layer, first))
        others = [h for h in range(n_heads) if h != first and (n_kv == 1 or h // group != first // group)]
        if others:
            heads.append((layer, others[int(torch.randint(len(others), (1,), generator=g))]))
    return sorted(heads)
