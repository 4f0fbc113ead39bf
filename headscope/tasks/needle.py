"""Needle-in-a-haystack retrieval (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality"), with our own haystack, needles and questions.

Each trial inserts one needle sentence (``data/needles.json``, written for headscope)
into haystack prose taken from CPython's bundled documentation (``pydoc_data.topics``, available
offline), at a relative depth, trimmed to a target context length in tokens. The question is
asked after the document, through the model's chat template when it has one.

Your own haystack and needles: ``haystack=PATH`` -- a text file (``.txt``/``.md``, read whole) or
a table read with ``datasets`` (``.parquet``, ``.jsonl``, ``.json``, ``.csv``; the rows of column
``haystack_column``, default ``text``, joined); ``needles=PATH`` -- JSON or JSONL, a list of
``{"needle", "question", "answer"}`` objects (or ``{"needles": [...]}``), each answer's words
found in its needle. Bad files are one-line errors naming the fix.

Choices (recorded in ``describe()``):

- Haystack: the ``pydoc_data.topics`` texts in sorted key order, joined, whitespace-normalised;
  trial ``i`` starts at a seeded random offset into it.
- The needle is inserted at a sentence-free token boundary: ``depth * context_len`` haystack
  tokens, then ``" " + needle``, then the rest; its token span is recorded exactly.
- ``context_len`` counts haystack + needle tokens (the prompt adds the chat wrapper and the
  question, a few dozen tokens).
- Grid: every (context_len, depth) pair, ``needles_per_cell`` needles each (cycling through the
  needle file with a seeded order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headscope.datafiles import load_json
from headscope.errors import HeadscopeError
from headscope.tasks.registry import register_task

INSTRUCTION = "Read the document and answer the question.\n\nDocument:\n"


TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def load_needles(path: str | None = None) -> list[dict[str, str]]:
    """Needles: dicts with ``needle``, ``question``, ``answer``; headscope's own by default, else
    those of a user's JSON / JSONL file (checked, one-line errors)."""
    if path is None:
        return load_json("needles.json")["needles"]
    from headscope.tasks.json_files import read_json, read_jsonl

    p = Path(path).expanduser()
    shape = 'a list of {"needle", "question", "answer"} objects'
    if not p.is_file():
        raise HeadscopeError(f"needles file {p} does not exist: give a JSON file with {shape}.")
    data = read_jsonl(p, "needles file") if p.suffix == ".jsonl" else read_json(p, "needles file", shape)
    if isinstance(data, dict) and "needles" in data:
        data = data["needles"]
    if not isinstance(data, list) or not data:
        raise HeadscopeError(f"needles file {p} must hold {shape} (or {{\"needles\": [...]}}), with at least one.")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise HeadscopeError(f"needles file {p}: entry {i} is not an object: write {shape}.")
        bad = [k for k in ("needle", "question", "answer") if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            raise HeadscopeError(f"needles file {p}: entry {i} has no text '{bad[0]}': each needs needle, question and answer.")
        words = re.findall(r"\w+", row["answer"].lower())
        if not set(words) <= set(re.findall(r"\w+", row["needle"].lower())):
            raise HeadscopeError(f"needles file {p}: entry {i}'s answer {row['answer']!r} is not in its needle: "
                                 "the answer must be the part of the needle that answers the question.")
        out.append({k: row[k].strip() for k in ("needle", "question", "answer")})
    return out


def haystack_text(source: str = "pydoc", column: str = "text") -> str:
    """Haystack prose, whitespace-normalised: CPython's ``pydoc_data.topics`` sorted by topic
    (``pydoc``), a text file read whole, or a table's ``column`` rows joined (via ``datasets``)."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        text = " ".join(topics[k] for k in sorted(topics))
    else:
        p = Path(source).expanduser()
        kinds = ", ".join((*TEXT_SUFFIXES, *TABLE_SUFFIXES))
        if not p.is_file():
            raise HeadscopeError(f"haystack file {p} does not exist: give a {kinds} file, or haystack=pydoc.")
        if p.suffix in TEXT_SUFFIXES:
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise HeadscopeError(f"haystack file {p} is not UTF-8 text: save it as UTF-8.") from None
        elif p.suffix in TABLE_SUFFIXES:
            text = " ".join(_table_rows(p, column))
        else:
            raise HeadscopeError(f"haystack file {p} has suffix '{p.suffix}': use one of {kinds}.")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise HeadscopeError(f"haystack {source} holds no text: give a file with prose in it.")
    return text


def _table_rows(path: Path, column: str) -> list[str]:
    """The non-empty ``column`` values of a Parquet / JSON(L) / CSV table, read with ``datasets``."""
    try:
        from datasets import load_dataset

        table = load_dataset(TABLE_SUFFIXES[path.suffix], data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - datasets/pyarrow raise many kinds for a bad file
        raise HeadscopeError(f"haystack file {path} cannot be read as {path.suffix[1:]} ({type(exc).__name__}): "
                             "check the file, or give a .txt file.") from None
    if column not in table.column_names:
        raise HeadscopeError(f"haystack file {path} has no column '{column}' (columns: "
                             f"{', '.join(table.column_names)}): pass -o haystack_column=NAME.")
    return [str(x) for x in table[column] if x is not None and str(x).strip()]


@dataclass(frozen=True)
class Trial:
    """One needle trial.

    Attributes:
        tokens: (1, pos) prompt ids, ending where the model starts answering.
        needle_span: (start, end) token positions of the needle in ``tokens`` (end exclusive).
        needle: the needle sentence; answer: its answer phrase; question: the question.
        context_len: target haystack + needle length; depth: relative needle depth.
    """

    tokens: torch.Tensor
    needle_span: tuple[int, int]
    needle: str
    answer: str
    question: str
    context_len: int
    depth: float


def _as_tuple(value: Any, cast: Any, name: str = "value") -> tuple:
    text = value
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, int | float):
        value = [value]
    try:
        return tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        kind = "integers" if cast is int else "numbers"
        raise HeadscopeError(f"{name}={text!r} must be a comma list of {kind}: e.g. -o {name}="
                             f"{'256,512' if cast is int else '0.1,0.5,0.9'}.") from None


@register_task(
    "needle",
    summary="needle-in-a-haystack over CPython docs (grid of context lengths x depths): retrieval heads",
    default_analyzer="retrieval_heads",
)
@dataclass
class NeedleTask:
    """Needle-in-a-haystack grid.

    Args:
        context_lengths: haystack + needle lengths in tokens (comma list on the CLI).
        depths: relative needle depths in [0, 1].
        needles_per_cell: trials per (length, depth) cell.
        seed: seeds the haystack offsets and the needle order.
        chat: use the model's chat template when it has one.
        haystack: ``pydoc`` (default) or a file (see the module docstring).
        haystack_column: the text column of a table haystack.
        needles: a needles file (default: headscope's ``data/needles.json``).
    """

    context_lengths: tuple[int, ...] | list[int] | str | int = (256, 512, 1024)
    depths: tuple[float, ...] | list[float] | str | float = (0.1, 0.5, 0.9)
    needles_per_cell: int = 1
    seed: int = 0
    chat: bool = True
    haystack: str = "pydoc"
    haystack_column: str = "text"
    needles: str | None = None
    name: str = field(default="needle", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.context_lengths = _as_tuple(self.context_lengths, int, "context_lengths")
        self.depths = _as_tuple(self.depths, float, "depths")
        if not self.context_lengths or min(self.context_lengths) < 16:
            raise HeadscopeError("context_lengths must be at least 16 tokens: e.g. -o context_lengths=256,512.")
        if any(not 0.0 <= d <= 1.0 for d in self.depths) or not self.depths:
            raise HeadscopeError("depths must lie in [0, 1]: e.g. -o depths=0.1,0.5,0.9.")
        if self.needles_per_cell < 1:
            raise HeadscopeError("needles_per_cell must be at least 1.")
        self._needles = load_needles(self.needles)  # checked now, before a model is loaded
        self._haystack = haystack_text(self.haystack, self.haystack_column)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "context_lengths": list(self.context_lengths), "depths": list(self.depths),
                "needles_per_cell": self.needles_per_cell, "seed": self.seed, "chat": self.chat,
                "haystack": "pydoc_data.topics (CPython docs)" if self.haystack == "pydoc" else self.haystack,
                "haystack_column": self.haystack_column if Path(self.haystack).suffix in TABLE_SUFFIXES else None,
                "needles": self.needles or "data/needles.json"}

    def _wrap(self, model: Any, document_ids: list[int], question: str) -> tuple[list[int], int]:
        """Prompt ids around the document and the offset of the document's first token."""
        tok = model.tokenizer
        marker = "\x00DOC\x00"
        user = f"{INSTRUCTION}{marker}\n\nQuestion: {question} Answer in one sentence."
        if self.chat and model.has_chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
            bos: list[int] = []
        else:
            text = user + "\nAnswer:"
            bos = [model.bos_token_id] if model.prepend_bos and model.bos_token_id is not None else []
        before, after = text.split(marker)
        pre = bos + tok.encode(before, add_special_tokens=False)
        post = tok.encode(after, add_special_tokens=False)
        return pre + document_ids + post, len(pre)

    def trials(self, model: Any) -> list[Trial]:
        """All trials of the grid for this model's tokenizer (cached)."""
        key = id(model.tokenizer)
        if key in self._cache:
            return self._cache[key]
        tok = model.tokenizer
        hay = tok.encode(self._haystack, add_special_tokens=False)
        needles = self._needles
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(needles), generator=gen).tolist()
        out: list[Trial] = []
        i = 0
        for length in self.context_lengths:
            for depth in self.depths:
                for _ in range(self.needles_per_cell):
                    nd = needles[order[i % len(needles)]]
                    i += 1
                    nid = tok.encode(" " + nd["needle"], add_special_tokens=False)
                    n_hay = max(0, length - len(nid))
                    if n_hay > len(hay):
                        raise HeadscopeError(f"context_len {length} exceeds the haystack ({len(hay)} tokens): use a "
                                             "longer haystack file or shorter context_lengths.")
                    start = int(torch.randint(0, len(hay) - n_hay + 1, (1,), generator=gen))
                    body = hay[start : start + n_hay]
                    cut = int(round(depth * n_hay))
                    doc = body[:cut] + nid + body[cut:]
                    ids, offset = self._wrap(model, doc, nd["question"])
                    model.check_length(len(ids) + 32)
                    span = (offset + cut, offset + cut + len(nid))
                    out.append(Trial(torch.tensor([ids]), span, nd["needle"], nd["answer"], nd["question"],
                                     length, depth))
        self._cache[key] = out
        return out
