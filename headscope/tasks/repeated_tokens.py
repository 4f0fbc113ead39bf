"""Repeated random tokens: the standard induction-head probe (Olsson et al. 2022).

Each prompt is ``[BOS] + R + R (+ R ...)`` where ``R`` is ``seq_len`` distinct whole-word
tokens drawn uniformly at random (seeded). In the second and later copies an induction head
attends to the token right after the earlier copy of the current token.

Choices (recorded in provenance):
- BOS is prepended when the model's tokenizer does so by default (as TransformerLens
  ``to_tokens`` does); ``prepend_bos`` overrides.
- Tokens within one copy of ``R`` are distinct, so the only duplicates are the planted repeats.
- Tokens are drawn from single-token words that round-trip through text
  (:func:`word_token_pool`), so each prompt also exists as a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.tasks.registry import register_task
from headscope.tasks.word_pool import round_trips, word_token_pool


@register_task(
    "induction",
    summary="repeated random tokens [BOS] R R: previous-token, duplicate-token and induction heads",
    default_analyzer="pattern_scores",
)
@dataclass
class RepeatedTokensTask:
    """Repeated random whole-word tokens.

    Args:
        n_prompts: number of prompts (batch).
        seq_len: length of the random block ``R``.
        n_repeats: how many times ``R`` appears.
        seed: RNG seed for the draw.
        prepend_bos: prepend BOS (None: the model's default).
    """

    n_prompts: int = 16
    seq_len: int = 48
    n_repeats: int = 2
    seed: int = 0
    prepend_bos: bool | None = None
    name: str = field(default="induction", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters, for provenance."""
        return {
            "name": self.name,
            "n_prompts": self.n_prompts,
            "seq_len": self.seq_len,
            "n_repeats": self.n_repeats,
            "seed": self.seed,
            "prepend_bos": self.prepend_bos,
        }

    def _bos(self, model: Any) -> bool:
        return model.prepend_bos if self.prepend_bos is None else bool(self.prepend_bos)

    def body_ids(self, model: Any) -> list[list[int]]:
        """The prompts without BOS, as lists of token ids (each ``n_repeats * seq_len`` long)."""
        key = ("ids", id(model.tokenizer))
        if key in self._cache:
            return self._cache[key]
        if self.n_prompts < 1 or self.seq_len < 2 or self.n_repeats < 1:
            raise HeadscopeError("induction task needs n_prompts >= 1, seq_len >= 2 and n_repeats >= 1.")
        pool = word_token_pool(model.tokenizer)
        if len(pool) < self.seq_len:
            raise HeadscopeError(
                f"only {len(pool)} round-trip word tokens in {model.spec}'s vocabulary; "
                f"use --option seq_len={max(2, len(pool) // 2)} or less."
            )
        model.check_length(self.seq_len * self.n_repeats + int(self._bos(model)))
        gen = torch.Generator().manual_seed(self.seed)
        prompts: list[list[int]] = []
        tries = 0
        while len(prompts) < self.n_prompts:
            tries += 1
            if tries > 50 * self.n_prompts:
                raise HeadscopeError("could not draw round-trip token sequences; lower seq_len.")
            block = pool[torch.randperm(len(pool), generator=gen)[: self.seq_len]].tolist()
            ids = block * self.n_repeats
            if round_trips(model.tokenizer, ids):
                prompts.append(ids)
        self._cache[key] = prompts
        return prompts

    def tokens(self, model: Any) -> torch.Tensor:
        """LongTensor (n_prompts, [1 +] n_repeats * seq_len)."""
        body = torch.tensor(self.body_ids(model), dtype=torch.long)
        if self._bos(model):
            bos = model.bos_token_id
            body = torch.cat([torch.full((body.shape[0], 1), bos, dtype=torch.long), body], dim=1)
        return body

    def texts(self, model: Any) -> list[str]:
        """The same prompts as strings (without BOS), for string-based tools."""
        return [model.tokenizer.decode(ids) for ids in self.body_ids(model)]
