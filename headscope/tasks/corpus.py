"""A plain-text corpus cut into fixed-length token windows (for training and scoring lenses).

Sources (``source``):

- ``pydoc`` (default, offline): the prose of CPython's ``pydoc_data.topics`` (the help texts of
  the language reference), one document per topic;
- a local ``.txt`` file (documents separated by blank lines);
- a hub dataset id (``datasets``, needs network; ``column`` names the text column, default
  ``text``); offline this is a one-line error naming the fix.

Split: documents are sorted by name (pydoc topics) or kept in file order, and every
``eval_every``-th document is held out, so held-out windows come from documents never trained
on. Each document is tokenized without BOS and cut into non-overlapping ``seq_len`` windows;
BOS is prepended to each window when the model prepends one by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.tasks.registry import register_task


def pydoc_documents() -> list[str]:
    """CPython's ``pydoc_data.topics`` help texts, sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - part of CPython
        raise HeadscopeError("pydoc_data is missing from this Python: use -o source=FILE.txt.") from None
    return [topics[k] for k in sorted(topics)]


def load_documents(source: str, column: str | None = None) -> list[str]:
    """Documents of a corpus source (see the module docstring)."""
    if source == "pydoc":
        return pydoc_documents()
    p = Path(source).expanduser()
    if p.suffix == ".txt":
        if not p.is_file():
            raise HeadscopeError(f"corpus file {p} does not exist.")
        return [d.strip() for d in p.read_text().split("\n\n") if d.strip()]
    try:
        from datasets import load_dataset

        ds = load_dataset(source, split="train")
    except Exception as exc:  # noqa: BLE001 - offline / missing dataset errors vary
        raise HeadscopeError(
            f"cannot load corpus '{source}' from the hub ({type(exc).__name__}; offline?): connect and unset "
            "HF_HUB_OFFLINE, or use -o source=pydoc or a .txt file."
        ) from None
    col = column or "text"
    if col not in ds.column_names:
        raise HeadscopeError(f"corpus '{source}' has no column '{col}': pass -o column=NAME.")
    return [str(x) for x in ds[col] if str(x).strip()]


@register_task("corpus", summary="plain-text windows (pydoc topics by default) for training/scoring lenses", default_analyzer="trained_lens")
@dataclass
class CorpusTask:
    """Token windows of a text corpus.

    Args:
        source: ``pydoc``, a .txt file or a hub dataset id.
        seq_len: window length in tokens (without BOS).
        n_train: training windows (at most).
        n_eval: held-out windows (at most).
        eval_every: every ``eval_every``-th document is held out.
        column: text column for hub datasets.
    """

    source: str = "pydoc"
    seq_len: int = 64
    n_train: int = 64
    n_eval: int = 16
    eval_every: int = 5
    column: str | None = None
    name: str = field(default="corpus", init=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters."""
        return {"name": self.name, "source": self.source, "seq_len": self.seq_len, "n_train": self.n_train,
                "n_eval": self.n_eval, "eval_every": self.eval_every, "column": self.column}

    def windows(self, model: Any, split: str = "train") -> torch.Tensor:
        """(n, seq_len [+1 with BOS]) token windows of ``split`` (``train`` or ``eval``)."""
        if self.seq_len < 2 or self.eval_every < 2:
            raise HeadscopeError("corpus needs seq_len >= 2 and eval_every >= 2.")
        docs = load_documents(self.source, self.column)
        held = split == "eval"
        chosen = [d for i, d in enumerate(docs) if (i % self.eval_every == self.eval_every - 1) == held]
        cap = self.n_eval if held else self.n_train
        rows: list[list[int]] = []
        bos = [model.bos_token_id] if model.prepend_bos and model.bos_token_id is not None else []
        for doc in chosen:
            ids = model.tokenizer.encode(doc, add_special_tokens=False)
            for s in range(0, len(ids) - self.seq_len + 1, self.seq_len):
                rows.append(bos + ids[s : s + self.seq_len])
                if len(rows) >= cap:
                    break
            if len(rows) >= cap:
                break
        if not rows:
            raise HeadscopeError(f"corpus '{self.source}' has no {split} window of {self.seq_len} tokens.")
        model.check_length(len(rows[0]))
        return torch.tensor(rows, dtype=torch.long)

    def tokens(self, model: Any) -> torch.Tensor:
        """The training windows (lets prompt analyzers such as logit_lens run on the corpus)."""
        return self.windows(model, "train")
