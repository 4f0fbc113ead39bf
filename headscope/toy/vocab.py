"""The shared word-level vocabulary of the toy models, and its successor relations.

Every toy model uses the same vocabulary, so token ids are stable across models:

* four special tokens first: ``<bos>`` (id 0), ``<eos>``, ``<pad>``, ``<unk>``;
* then the word tokens, family by family, in the order of :data:`SUCCESSION_FAMILIES`
  (numbers ``"1"``..``"30"``, number words ``"one"``..``"twenty"``, ordinals ``"first"``..
  ``"tenth"``, days, months, day prefixes ``"Mon"``..``"Sun"``, month prefixes ``"Jan"``..
  ``"Dec"``, letters ``"A"``..``"Z"``);
* then a few filler words (:data:`FILLER_WORDS`) that belong to no family.

Each family is an ordered sequence with a successor relation: ``t -> the next element``.
Days and months (and their prefixes) are cyclic, so ``Sunday -> Monday`` and
``December -> January``; the other families are linear, so their last element (``"30"``,
``"twenty"``, ``"tenth"``, ``"Z"``) has no successor.

One token belongs to two families: ``"May"`` is both a month and the three-letter month prefix.
It appears once in the vocabulary; its successor is ``"June"`` in the ``months`` family and
``"Jun"`` in the ``month_prefixes`` family. Successor relations are therefore always stated
per family (:func:`successor`, :data:`SUCCESSOR_PAIRS`); :data:`SUCCESSORS` collects, for each
token, the successors it has in all of its families.
"""

from __future__ import annotations

__all__ = [
    "BOS",
    "CYCLIC_FAMILIES",
    "EOS",
    "FILLER_WORDS",
    "PAD",
    "SPECIAL_TOKENS",
    "SUCCESSION_FAMILIES",
    "SUCCESSORS",
    "SUCCESSOR_PAIRS",
    "UNK",
    "VOCAB",
    "WORD_TOKENS",
    "families_of",
    "successor",
    "token_id",
]

BOS = "<bos>"
EOS = "<eos>"
PAD = "<pad>"
UNK = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, UNK)

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()

SUCCESSION_FAMILIES: dict[str, list[str]] = {
    "numbers": [str(n) for n in range(1, 31)],
    "number_words": _NUMBER_WORDS,
    "ordinals": _ORDINALS,
    "days": _DAYS,
    "months": _MONTHS,
    "day_prefixes": [day[:3] for day in _DAYS],
    "month_prefixes": [month[:3] for month in _MONTHS],
    "letters": [chr(c) for c in range(ord("A"), ord("Z") + 1)],
}
"""Ordered token families; each element's successor is the next one in its list."""

CYCLIC_FAMILIES: frozenset[str] = frozenset({"days", "months", "day_prefixes", "month_prefixes"})
"""Families whose last element wraps around to the first (``Sunday -> Monday``)."""

FILLER_WORDS: tuple[str, ...] = ("the", "and", "of", "is", "a")
"""Word tokens that belong to no succession family."""


def _build_vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for family in SUCCESSION_FAMILIES.values():
        for token in family:
            vocab.setdefault(token, len(vocab))
    for token in FILLER_WORDS:
        vocab.setdefault(token, len(vocab))
    return vocab


VOCAB: dict[str, int] = _build_vocab()
"""Token string -> id, shared by every toy model (specials first, ``<bos>`` is 0)."""

WORD_TOKENS: tuple[str, ...] = tuple(t for t in VOCAB if t not in SPECIAL_TOKENS)
"""All non-special tokens, in id order."""


def successor(token: str, family: str) -> str | None:
    """The successor of ``token`` inside ``family``, or ``None`` at the end of a linear family.

    Raises:
        KeyError: if ``family`` is unknown or ``token`` is not in it.
    """
    members = SUCCESSION_FAMILIES[family]
    if token not in members:
        raise KeyError(f"{token!r} is not in family {family!r}")
    i = members.index(token)
    if i + 1 < len(members):
        return members[i + 1]
    return members[0] if family in CYCLIC_FAMILIES else None


SUCCESSOR_PAIRS: dict[str, list[tuple[str, str]]] = {
    family: [(tok, nxt) for tok in members if (nxt := successor(tok, family)) is not None]
    for family, members in SUCCESSION_FAMILIES.items()
}
"""Family -> list of ``(token, successor)`` pairs (terminal tokens of linear families omitted)."""


def _build_successors() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for pairs in SUCCESSOR_PAIRS.values():
        for tok, nxt in pairs:
            out.setdefault(tok, [])
            if nxt not in out[tok]:
                out[tok].append(nxt)
    return {tok: tuple(nxts) for tok, nxts in out.items()}


SUCCESSORS: dict[str, tuple[str, ...]] = _build_successors()
"""Token -> its successors over all families it belongs to (``"May" -> ("June", "Jun")``)."""


def families_of(token: str) -> list[str]:
    """Names of the succession families that contain ``token`` (usually one, two for May)."""
    return [name for name, members in SUCCESSION_FAMILIES.items() if token in members]


def token_id(token: str) -> int:
    """The id of ``token`` in :data:`VOCAB` (raises ``KeyError`` if it is not a token)."""
    return VOCAB[token]
