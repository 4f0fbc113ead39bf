"""Induction as a contrastive task: repeated vs unrepeated random tokens (Olsson et al. 2022).

Clean prompt: ``[BOS] R R[:m]`` with ``R`` a block of ``seq_len`` distinct whole-word tokens
and ``m = seq_len - 1``; an induction circuit predicts ``R[m]`` at the last position.
Corrupted prompt: ``[BOS] S R[:m]`` where ``S`` is a fresh block with no token of ``R``, so
nothing is repeated and ``R[m]`` is not predictable. Answer: ``R[m]``; wrong answer: a pool
token in neither block (fixed per prompt). Named positions: ``PREV`` (the earlier occurrence
of the last token, in the first block), ``END``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.tasks.contrastive import END, ContrastiveBatch
from headscope.tasks.registry import register_task
from headscope.tasks.word_pool import word_token_pool


@register_task(
    "induction_contrast",
    summary="repeated tokens [BOS] R R vs unrepeated [BOS] S R: logit of the induced next token",
    default_analyzer="activation_patching",
)
@dataclass
class InductionContrastTask:
    """Repeated vs unrepeated random token blocks.

    Args:
        n_prompts: number of prompt pairs.
        seq_len: length of the random block.
        seed: RNG seed.
        prepend_bos: prepend BOS (None: the model's default).
    """

    n_prompts: int = 8
    seq_len: int = 10
    seed: int = 0
    prepend_bos: bool | None = None
    name: str = field(default="induction_contrast", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters, for provenance."""
        return {"name": self.name, "n_prompts": self.n_prompts, "seq_len": self.seq_len, "seed": self.seed,
                "prepend_bos": self.prepend_bos, "metric": "logit_diff(next repeated token - unrelated token) at END"}

    def batch(self, model: Any, pool: torch.Tensor | None = None) -> ContrastiveBatch:
        """Token batches built directly from ids (no text round trip needed)."""
        key = id(model.tokenizer)
        if key in self._cache:
            return self._cache[key]
        pool = word_token_pool(model.tokenizer) if pool is None else pool
        if self.seq_len < 2 or len(pool) < 2 * self.seq_len + 1:
            raise HeadscopeError(
                f"induction_contrast needs seq_len >= 2 and 2*seq_len+1 <= {len(pool)} word tokens; lower seq_len."
            )
        bos = model.prepend_bos if self.prepend_bos is None else bool(self.prepend_bos)
        model.check_length(2 * self.seq_len - 1 + int(bos))
        gen = torch.Generator().manual_seed(self.seed)
        clean, corr, ans, wrong = [], [], [], []
        m = self.seq_len - 1
        for _ in range(self.n_prompts):
            draw = pool[torch.randperm(len(pool), generator=gen)[: 2 * self.seq_len + 1]]
            r, s, other = draw[: self.seq_len], draw[self.seq_len : 2 * self.seq_len], draw[-1]
            clean.append(torch.cat([r, r[:m]]))
            corr.append(torch.cat([s, r[:m]]))
            ans.append(r[m])
            wrong.append(other)
        clean_t, corr_t = torch.stack(clean), torch.stack(corr)
        off = 0
        if bos:
            col = torch.full((self.n_prompts, 1), int(model.bos_token_id), dtype=torch.long)
            clean_t, corr_t, off = torch.cat([col, clean_t], 1), torch.cat([col, corr_t], 1), 1
        n, width = clean_t.shape
        batch = ContrastiveBatch(
            clean=clean_t,
            corrupted=corr_t,
            answer=torch.stack(ans).long(),
            wrong=torch.stack(wrong).long(),
            positions={"PREV": torch.full((n,), off + m - 1, dtype=torch.long), END: torch.full((n,), width - 1, dtype=torch.long)},
        )
        self._cache[key] = batch
        return batch

    def tokens(self, model: Any) -> torch.Tensor:
        """The clean prompts (n, pos)."""
        return self.batch(model).clean
