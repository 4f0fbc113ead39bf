"""Factual recall: "The capital city of France is" -> " Paris" (Meng et al. 2022, ROME).

Clean prompts name a country; the corrupted prompt names a different country in the same
template (same token length). Answer: the clean country's capital; wrong answer: the
corrupted country's capital. Country/capital pairs and templates are headscope's own
(``data/facts_capitals.json``); only pairs whose names are single tokens (with a
leading space) for the model's tokenizer are used. Named positions: ``SUBJECT`` (the country
token) and ``END``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError
from headscope.tasks.contrastive import ContrastiveBatch, build_batch, encode
from headscope.tasks.registry import register_task


def _single(model: Any, word: str) -> bool:
    return len(model.tokenizer.encode(" " + word, add_special_tokens=False)) == 1


@register_task(
    "facts",
    summary="factual recall (capital of a country), corrupted = another country",
    default_analyzer="activation_patching",
)
@dataclass
class FactsTask:
    """Capital-city recall with a corrupted subject.

    Args:
        n_prompts: number of prompt pairs.
        seed: RNG seed for pairing countries.
        prepend_bos: prepend BOS (None: the model's default).
    """

    n_prompts: int = 16
    seed: int = 0
    prepend_bos: bool | None = None
    name: str = field(default="facts", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters, for provenance."""
        return {"name": self.name, "n_prompts": self.n_prompts, "seed": self.seed,
                "prepend_bos": self.prepend_bos, "metric": "logit_diff(capital - corrupted capital) at END"}

    def batch(self, model: Any) -> ContrastiveBatch:
        """Clean/corrupted prompts with the SUBJECT and END positions."""
        key = id(model.tokenizer)
        if key in self._cache:
            return self._cache[key]
        data = load_json("facts_capitals.json")
        pairs = [(c, k) for c, k in data["pairs"] if _single(model, c) and _single(model, k)]
        if len(pairs) < 2:
            raise HeadscopeError(f"fewer than 2 single-token country/capital pairs for {model.spec}.")
        rng = random.Random(self.seed)
        bos = model.prepend_bos if self.prepend_bos is None else bool(self.prepend_bos)
        clean, corr, ans, wrong, subj, groups = [], [], [], [], [], []
        for i in range(self.n_prompts):
            t = i % len(data["templates"])
            template = data["templates"][t]
            (c1, k1), (c2, k2) = rng.sample(pairs, 2)
            clean.append(template.format(COUNTRY=c1))
            corr.append(template.format(COUNTRY=c2))
            ans.append(" " + k1)
            wrong.append(" " + k2)
            ids = encode(model, clean[-1], bos)
            subj.append(ids.index(model.single_token(" " + c1)))
            groups.append(f"t{t}")
        batch = build_batch(model, clean, corr, ans, wrong, bos=bos, named={"SUBJECT": subj}, groups=groups)
        self._cache[key] = batch
        return batch

    def tokens(self, model: Any) -> Any:
        """The clean prompts (n, pos)."""
        return self.batch(model).clean
