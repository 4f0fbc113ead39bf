"""Token relations for MAPS (Elhelo & Geva 2024): (source token, target token) pairs.

Built-in relations (``data/maps_relations.json``, written for headscope):
``copying`` (t -> t), ``successor`` (1 -> 2, Monday -> Tuesday, A -> B, ...),
``country_capital`` (France -> Paris) and ``lowercase_uppercase`` (a -> A, city -> City).
A user's relation: ``-o path=pairs.json`` (a JSON list of ``[source, target]`` pairs, or an
object ``{"pairs": [...]}``) or a CSV with ``source,target`` columns.

Tokenization (recorded): each word is tried with a leading space first (the usual BPE
word-start form), then bare; a pair is kept only if both words are single tokens, and the
number of skipped pairs is reported.

    headscope score --task relation -o relation=copying --analyzer maps
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError, suggest
from headscope.tasks.json_files import read_json
from headscope.tasks.registry import register_task


def builtin_relations() -> dict[str, list[list[str]]]:
    """All built-in relations: name -> [[source, target], ...]."""
    data = load_json("maps_relations.json")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def read_pairs(path: str | Path) -> list[list[str]]:
    """Read (source, target) pairs from a .json or .csv file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HeadscopeError(f"relation file {p} does not exist: pass -o path=pairs.json|csv.")
    if p.suffix.lower() == ".csv":
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"source", "target"} <= set(rows[0]):
            raise HeadscopeError(f"relation file {p} needs columns source,target.")
        return [[r["source"], r["target"]] for r in rows]
    data = read_json(p, "relation file", "a .json list of [source, target] pairs or a .csv with columns source,target")
    pairs = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(pairs, list) or not all(isinstance(x, list | tuple) and len(x) == 2 for x in pairs):
        raise HeadscopeError(f"relation file {p} must hold a list of [source, target] pairs.")
    return [[str(a), str(b)] for a, b in pairs]


def single_token_id(tokenizer: Any, word: str) -> int | None:
    """Id of ``" " + word`` or ``word`` if one of them is a single token (in that order)."""
    for form in (" " + word, word):
        ids = tokenizer.encode(form, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None):
            return int(ids[0])
    return None


@register_task("relation", summary="(source, target) token pairs of a relation, for MAPS", default_analyzer="maps")
@dataclass
class RelationTask:
    """A token relation.

    Args:
        relation: built-in relation name (``copying``, ``successor``, ``country_capital``,
            ``lowercase_uppercase``); ignored when ``path`` is given.
        path: a user's .json/.csv file of pairs.
    """

    relation: str = "copying"
    path: str | None = None
    name: str = field(default="relation", init=False)

    def raw_pairs(self) -> list[list[str]]:
        """The pairs as words."""
        if self.path:
            return read_pairs(self.path)
        rel = builtin_relations()
        if self.relation not in rel:
            raise HeadscopeError(
                f"unknown relation '{self.relation}'.{suggest(self.relation, rel)} Relations: {', '.join(rel)} "
                "(or -o path=pairs.json)."
            )
        return rel[self.relation]

    def pairs(self, model: Any) -> tuple[list[int], list[int], int]:
        """(source ids, target ids, number of skipped pairs) for the model's tokenizer."""
        src, tgt, skipped = [], [], 0
        for a, b in self.raw_pairs():
            ia, ib = single_token_id(model.tokenizer, a), single_token_id(model.tokenizer, b)
            if ia is None or ib is None:
                skipped += 1
                continue
            src.append(ia)
            tgt.append(ib)
        if not src:
            raise HeadscopeError(f"no pair of relation '{self.path or self.relation}' is single-token for {model.spec}.")
        return src, tgt, skipped

    def token_ids(self, model: Any) -> list[int]:
        """Distinct source ids (lets token-set analyzers such as ov_copying run on a relation)."""
        return list(dict.fromkeys(self.pairs(model)[0]))

    def describe(self) -> dict[str, Any]:
        """Task name and parameters."""
        return {"name": self.name, "relation": None if self.path else self.relation, "path": self.path}
