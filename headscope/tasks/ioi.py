"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild").

Prompts like "After Mary and John arrived at the store, John handed a drink to" whose answer
is the indirect object (IO, " Mary") rather than the subject (S, " John"). Templates and word
lists are headscope's own (``data/ioi_templates.json``, ``ioi_words.json``); only
names, places and objects that are a single token with a leading space for the model's
tokenizer are used.

Orders: ``ABBA`` (IO first), ``BABA`` (S first), or ``mixed`` (alternating).

Corruptions (``corruption=``):

- ``abc``: the three name slots (IO, S1, S2) are replaced by three other, distinct names, so the
  corrupted prompt carries no IOI signal for the clean answer pair (Wang et al.'s ABC
  distribution);
- ``flipped``: the second subject mention S2 is replaced by IO, which flips the correct
  answer to S (the "names flipped" distribution).

Named positions: ``IO``, ``S1``, ``S2`` and ``END`` (the final token " to"). Metric: logit
difference ``logit[IO] - logit[S]`` at ``END``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError, suggest
from headscope.tasks.contrastive import ContrastiveBatch, build_batch, encode, single_token_words
from headscope.tasks.registry import register_task

CORRUPTIONS = ("abc", "flipped")
ORDERS = ("mixed", "ABBA", "BABA")


@register_task(
    "ioi",
    summary="indirect object identification (clean vs ABC or flipped-name corrupted prompts)",
    default_analyzer="activation_patching",
)
@dataclass
class IOITask:
    """IOI prompts with a corrupted counterpart of equal token length.

    Args:
        n_prompts: number of prompt pairs.
        corruption: ``abc`` or ``flipped``.
        order: ``mixed``, ``ABBA`` or ``BABA``.
        templates: indices into the template list (default all), e.g. ``[0]`` for one
            template (then every prompt has the same length).
        seed: RNG seed for the names, places and objects.
        prepend_bos: prepend BOS (None: the model's default).
    """

    n_prompts: int = 16
    corruption: str = "abc"
    order: str = "mixed"
    templates: list[int] | None = None
    seed: int = 0
    prepend_bos: bool | None = None
    name: str = field(default="ioi", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters, for provenance."""
        return {
            "name": self.name,
            "n_prompts": self.n_prompts,
            "corruption": self.corruption,
            "order": self.order,
            "templates": self.templates,
            "seed": self.seed,
            "prepend_bos": self.prepend_bos,
            "metric": "logit_diff(IO - S) at END",
        }

    def _check(self) -> list[tuple[int, str]]:
        if self.corruption not in CORRUPTIONS:
            raise HeadscopeError(
                f"unknown IOI corruption '{self.corruption}'.{suggest(self.corruption, CORRUPTIONS)} "
                f"Choose from {', '.join(CORRUPTIONS)}."
            )
        if self.order not in ORDERS:
            raise HeadscopeError(f"unknown IOI order '{self.order}': choose from {', '.join(ORDERS)}.")
        if self.n_prompts < 1:
            raise HeadscopeError("ioi needs n_prompts >= 1.")
        all_templates = load_json("ioi_templates.json")["templates"]
        idx = list(range(len(all_templates))) if self.templates is None else list(self.templates)
        bad = [i for i in idx if not 0 <= int(i) < len(all_templates)]
        if bad or not idx:
            raise HeadscopeError(f"IOI templates are numbered 0..{len(all_templates) - 1}; got {self.templates}.")
        return [(int(i), all_templates[int(i)]) for i in idx]

    def batch(self, model: Any) -> ContrastiveBatch:
        """Clean and corrupted prompts, answers (IO) and wrong answers (S), named positions."""
        key = id(model.tokenizer)
        if key in self._cache:
            return self._cache[key]
        templates = self._check()
        words = load_json("ioi_words.json")
        names = single_token_words(model, words["names"])
        places = single_token_words(model, words["places"])
        objects = single_token_words(model, words["objects"])
        if len(names) < 5 or not places or not objects:
            raise HeadscopeError(
                f"{model.spec}'s tokenizer has too few single-token names/places/objects for IOI "
                f"({len(names)} names): use a model with a word-level BPE vocabulary."
            )
        rng = random.Random(self.seed)
        bos = model.prepend_bos if self.prepend_bos is None else bool(self.prepend_bos)
        rows: dict[str, list] = {k: [] for k in ("clean", "corr", "ans", "wrong", "IO", "S1", "S2", "group")}
        for i in range(self.n_prompts):
            t_idx, template = templates[i % len(templates)]
            order = self.order if self.order != "mixed" else ("ABBA", "BABA")[(i // len(templates)) % 2]
            io, s, *others = rng.sample(names, 5)
            fill = {"PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
            x, y = (io, s) if order == "ABBA" else (s, io)
            clean = template.format(X=x, Y=y, B=s, **fill)
            if self.corruption == "abc":
                c1, c2, c3 = others
                cx, cy = (c1, c2) if order == "ABBA" else (c2, c1)
                corrupted = template.format(X=cx, Y=cy, B=c3, **fill)
            else:
                corrupted = template.format(X=x, Y=y, B=io, **fill)
            ids = encode(model, clean, bos)
            io_id, s_id = model.single_token(" " + io), model.single_token(" " + s)
            s_pos = [p for p, t in enumerate(ids) if t == s_id]
            io_pos = [p for p, t in enumerate(ids) if t == io_id]
            if len(s_pos) != 2 or len(io_pos) != 1:
                raise HeadscopeError(_untokenizable(model, t_idx, ids, io, s, {**fill, "X": x, "Y": y, "B": s}, bos))
            rows["clean"].append(clean)
            rows["corr"].append(corrupted)
            rows["ans"].append(" " + io)
            rows["wrong"].append(" " + s)
            rows["IO"].append(io_pos[0])
            rows["S1"].append(s_pos[0])
            rows["S2"].append(s_pos[1])
            rows["group"].append(f"t{t_idx}-{order}")
        batch = build_batch(
            model,
            rows["clean"],
            rows["corr"],
            rows["ans"],
            rows["wrong"],
            bos=bos,
            named={k: rows[k] for k in ("IO", "S1", "S2")},
            groups=rows["group"],
        )
        self._cache[key] = batch
        return batch

    def tokens(self, model: Any) -> Any:
        """The clean prompts (n, pos), for analyzers that read one batch."""
        return self.batch(model).clean


def _untokenizable(model: Any, t_idx: int, ids: list[int], io: str, s: str, fill: dict[str, str], bos: bool) -> str:
    """The one-line error for a prompt whose names are not separate tokens: the template id (in
    ``data/ioi_templates.json``), which name fails and why, and the templates that do work with
    the same words (never the failing one), or that none does."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    where = f"IOI template {t_idx} cannot be used with {model.spec}"
    for name in (io, s):
        if unk is not None and model.single_token(" " + name) == unk:
            return (f"{where}: the name ' {name}' is the tokenizer's unknown token {tok.unk_token!r} (its vocabulary "
                    "has no IOI names), so no template separates the names; use a model with a word-level BPE vocabulary.")
    pieces = [tok.decode([t]) for t in ids]
    cause = ""
    for name, want in ((s, 2), (io, 1)):
        found = ids.count(model.single_token(" " + name))
        if found != want:
            cause = (f"the name ' {name}' should be {want} separate token(s) in the prompt but is {found} "
                     f"(the prompt tokenizes as {pieces})")
            break
    fits = []
    for j, other in enumerate(load_json("ioi_templates.json")["templates"]):
        if j == t_idx:
            continue
        other_ids = encode(model, other.format(**fill), bos)
        if other_ids.count(model.single_token(" " + s)) == 2 and other_ids.count(model.single_token(" " + io)) == 1:
            fits.append(j)
    fix = (f"choose templates that do, e.g. -o templates=[{','.join(map(str, fits))}]" if fits
           else "no other template separates them either; use a model with a word-level BPE vocabulary")
    return f"{where}: {cause or 'its names are not separate tokens'}; {fix}."
