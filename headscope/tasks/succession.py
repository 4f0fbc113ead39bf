"""Succession dataset (Gould et al. 2023, "Successor Heads"), built from the model's tokenizer.

Families (each an ordered list; ``t -> next element``):

- ``numbers`` 1..200, ``number_words`` one..twenty, ``ordinals`` first..tenth (linear);
- ``days`` Monday..Sunday and ``months`` January..December, with wrap-around
  (Sunday -> Monday, December -> January);
- ``day_prefixes`` Mon..Sun and ``month_prefixes`` Jan..Dec (three letters, wrap-around);
- ``letters`` A..Z (linear).

Choices (recorded in ``describe()``):

- Only single-token items are kept (known tokens that decode back to the word). For each family both spellings ``" word"`` (leading space,
  how words appear mid-text in byte-level BPE) and ``"word"`` are tried; the family uses the
  spelling that keeps more items (ties: leading space). SmolLM2 splits digits, so ``numbers``
  keeps only 1..9 (no space).
- A pair ``(t, succ(t))`` is used only when both tokens survive; in cyclic families the last kept
  item wraps to the first only when the family is complete (e.g. Sunday -> Monday).
- ``"May"`` is both a month and a month prefix; it is scored within each family separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headscope.errors import HeadscopeError
from headscope.tasks.registry import register_task

_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December".split()

FAMILIES: dict[str, list[str]] = {
    "numbers": [str(n) for n in range(1, 201)],
    "number_words": (
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty"
    ).split(),
    "ordinals": "first second third fourth fifth sixth seventh eighth ninth tenth".split(),
    "days": _DAYS,
    "months": _MONTHS,
    "day_prefixes": [d[:3] for d in _DAYS],
    "month_prefixes": [m[:3] for m in _MONTHS],
    "letters": [chr(c) for c in range(ord("A"), ord("Z") + 1)],
}
CYCLIC: frozenset[str] = frozenset({"days", "months", "day_prefixes", "month_prefixes"})


@dataclass(frozen=True)
class Family:
    """One family after tokenization: kept words in order, their ids, and the successor pairs."""

    name: str
    prefix: str
    words: tuple[str, ...]
    ids: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]  # (index of t, index of succ(t)) into ids
    n_total: int


def _single(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` if it is one known token that decodes back to ``text``, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    if tokenizer.decode(ids).strip() != text.strip():
        return None
    return int(ids[0])


def build_family(tokenizer: Any, name: str, words: list[str], cyclic: bool) -> Family:
    """Tokenize one family, choosing the spelling that keeps more single-token items."""
    best: tuple[str, list[tuple[int, str, int]]] | None = None
    for prefix in (" ", ""):
        kept = [(i, w, tid) for i, w in enumerate(words) if (tid := _single(tokenizer, prefix + w)) is not None]
        if best is None or len(kept) > len(best[1]):
            best = (prefix, kept)
    assert best is not None
    prefix, kept = best
    original_index = [i for i, _, _ in kept]
    pairs: list[tuple[int, int]] = []
    for j, i in enumerate(original_index):
        nxt = i + 1
        if nxt == len(words) and cyclic:
            nxt = 0
        if nxt in original_index:
            pairs.append((j, original_index.index(nxt)))
    return Family(
        name=name,
        prefix=prefix,
        words=tuple(w for _, w, _ in kept),
        ids=tuple(t for _, _, t in kept),
        pairs=tuple(pairs),
        n_total=len(words),
    )


@register_task(
    "succession",
    summary="ordinal-sequence families (numbers, days, months, letters, ...): successor heads",
    default_analyzer="successor_heads",
)
@dataclass
class SuccessionTask:
    """Succession families tokenized for one model.

    Args:
        families: family names to use (default: all of :data:`FAMILIES`).
        prompt_len: items per activation-check prompt (consecutive family items).
        seed: unused by the data (kept for a uniform CLI); recorded in provenance.
    """

    families: tuple[str, ...] | list[str] | str | None = None
    prompt_len: int = 6
    seed: int = 0
    name: str = field(default="succession", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def _names(self) -> list[str]:
        if self.families is None:
            return list(FAMILIES)
        names = [self.families] if isinstance(self.families, str) else list(self.families)
        names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
        bad = [n for n in names if n not in FAMILIES]
        if bad:
            from headscope.errors import suggest

            raise HeadscopeError(
                f"unknown succession family '{bad[0]}'.{suggest(bad[0], FAMILIES)} "
                f"Families: {', '.join(FAMILIES)}."
            )
        return names

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "families": self._names(), "prompt_len": self.prompt_len, "seed": self.seed}

    def tokenized(self, model: Any) -> dict[str, Family]:
        """Family name -> :class:`Family` for families that keep at least one successor pair."""
        key = id(model.tokenizer)
        if key not in self._cache:
            out = {}
            for name in self._names():
                fam = build_family(model.tokenizer, name, FAMILIES[name], name in CYCLIC)
                if fam.pairs:
                    out[name] = fam
            if not out:
                raise HeadscopeError(f"no succession family survives {model.spec}'s tokenizer as single tokens.")
            self._cache[key] = out
        return self._cache[key]

    def kept_counts(self, model: Any) -> dict[str, dict[str, Any]]:
        """Per family: items kept / total, pairs, spelling -- including families that were dropped."""
        kept = self.tokenized(model)
        out: dict[str, dict[str, Any]] = {}
        for name in self._names():
            fam = kept.get(name) or build_family(model.tokenizer, name, FAMILIES[name], name in CYCLIC)
            out[name] = {"kept": len(fam.ids), "total": fam.n_total, "pairs": len(fam.pairs),
                         "prefix": fam.prefix, "used": name in kept}
        return out

    def token_ids(self, model: Any) -> list[int]:
        """All distinct kept family tokens, in family order."""
        return list(dict.fromkeys(t for fam in self.tokenized(model).values() for t in fam.ids))

    def prompts(self, model: Any) -> list[tuple[str, list[int]]]:
        """Activation-check prompts: per family, runs of ``prompt_len`` consecutive kept items.

        Returns ``(family, ids)`` with ids as indices into the family's ``ids`` (no BOS); a run
        follows the successor pairs, so every next item is the true successor. Families are
        covered by non-overlapping runs.
        """
        out: list[tuple[str, list[int]]] = []
        for name, fam in self.tokenized(model).items():
            nxt = dict(fam.pairs)
            start_points = [i for i in range(len(fam.ids))]
            used: set[int] = set()
            for s in start_points:
                if s in used:
                    continue
                run = [s]
                while len(run) < max(2, self.prompt_len) and run[-1] in nxt and nxt[run[-1]] not in run:
                    run.append(nxt[run[-1]])
                if len(run) >= 2:
                    out.append((name, run))
                    used.update(run[:-1])
        return out
