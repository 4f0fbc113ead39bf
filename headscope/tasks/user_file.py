"""A contrastive task from the user's own json, jsonl, csv or parquet file (read with ``datasets``).

Required columns: ``clean``, ``corrupted`` (prompts), ``answer`` and ``wrong`` (single-token
continuations of the clean prompt, e.g. ``" Paris"``). Optional: ``group`` (template label).
Each corrupted prompt must tokenize to as many tokens as its clean prompt. Problems are
reported as one-line errors naming the row and the fix.

    headscope score --task user_file -o path=my_pairs.csv --analyzer activation_patching
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headscope.errors import HeadscopeError
from headscope.tasks.contrastive import ContrastiveBatch, build_batch
from headscope.tasks.registry import register_task

REQUIRED = ("clean", "corrupted", "answer", "wrong")
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(path: str | Path) -> dict[str, list[Any]]:
    """Read a table with ``datasets`` and check its columns; returns column -> values."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HeadscopeError(f"task file {p} does not exist: pass -o path=FILE.csv|json|jsonl|parquet.")
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise HeadscopeError(f"task file {p} must end in {', '.join(FORMATS)}; got '{p.suffix}'.")
    from datasets import load_dataset

    try:
        ds = load_dataset(fmt, data_files=str(p), split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for bad files
        raise HeadscopeError(f"cannot read task file {p} as {fmt}: {str(exc).splitlines()[0][:200]}") from None
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise HeadscopeError(
            f"task file {p} is missing column(s) {', '.join(missing)}: it needs {', '.join(REQUIRED)} "
            f"(has {', '.join(ds.column_names) or 'none'})."
        )
    if len(ds) == 0:
        raise HeadscopeError(f"task file {p} has no rows.")
    cols = {c: list(ds[c]) for c in ds.column_names}
    for c in REQUIRED:
        bad = [i for i, v in enumerate(cols[c]) if not isinstance(v, str) or v == ""]
        if bad:
            raise HeadscopeError(f"task file {p}: column '{c}' is empty or not text in row {bad[0]}.")
    return cols


@register_task(
    "user_file",
    summary="your own clean/corrupted/answer/wrong rows from a json, csv or parquet file",
    default_analyzer="activation_patching",
)
@dataclass
class UserFileTask:
    """Contrastive rows from a file.

    Args:
        path: the file (json, jsonl, csv or parquet).
        prepend_bos: prepend BOS (None: the model's default).
    """

    path: str = ""
    prepend_bos: bool | None = None
    name: str = field(default="user_file", init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> dict[str, Any]:
        """Task name and parameters, for provenance."""
        return {"name": self.name, "path": str(self.path), "prepend_bos": self.prepend_bos,
                "metric": "logit_diff(answer - wrong) at END"}

    def batch(self, model: Any) -> ContrastiveBatch:
        """Validated clean/corrupted batches (see module docstring)."""
        key = id(model.tokenizer)
        if key in self._cache:
            return self._cache[key]
        if not self.path:
            raise HeadscopeError("user_file task needs a file: pass -o path=FILE.csv|json|parquet.")
        cols = read_rows(self.path)
        bos = model.prepend_bos if self.prepend_bos is None else bool(self.prepend_bos)
        batch = build_batch(
            model, cols["clean"], cols["corrupted"], cols["answer"], cols["wrong"], bos=bos,
            groups=[str(g) for g in cols["group"]] if "group" in cols else None,
        )
        self._cache[key] = batch
        return batch

    def tokens(self, model: Any) -> Any:
        """The clean prompts (n, pos)."""
        return self.batch(model).clean
