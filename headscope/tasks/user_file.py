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


def check_syntax(p: Path, raw: bytes) -> None:
    """One-line errors, naming the line, for files ``datasets`` would report vaguely: empty
    files, invalid JSON/JSONL, CSV with an unbalanced quote or a row of the wrong width."""
    import csv
    import io
    import json

    suffix = p.suffix.lower()
    if suffix == ".parquet":
        if not raw:
            raise HeadscopeError(f"task file {p} is empty: write a Parquet table with columns {', '.join(REQUIRED)}.")
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HeadscopeError(f"task file {p} is not UTF-8 text (byte {exc.start}): save it as UTF-8.") from None
    if not text.strip():
        raise HeadscopeError(f"task file {p} is empty: it needs rows with columns {', '.join(REQUIRED)}.")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HeadscopeError(f"task file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): "
                                 "fix the file or save it as .csv.") from None
        rows = data if isinstance(data, list) else None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            rows = lists[0] if len(lists) == 1 else None
            if rows is None and all(isinstance(v, list) for v in data.values()):
                return  # columns as lists: {"clean": [...], ...}
        if rows is None or not all(isinstance(r, dict) for r in rows):
            raise HeadscopeError(f"task file {p} must hold a JSON list of objects with keys {', '.join(REQUIRED)} "
                                 '(e.g. [{"clean": "...", "corrupted": "...", "answer": " x", "wrong": " y"}]).')
        if not rows:
            raise HeadscopeError(f"task file {p} has no rows.")
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HeadscopeError(f"task file {p} line {n} is not valid JSON ({exc.msg}, column {exc.colno}).") from None
            if not isinstance(obj, dict):
                raise HeadscopeError(f"task file {p} line {n} is not a JSON object with keys {', '.join(REQUIRED)}.")
    elif suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
            n_rows = 0
            for row in reader:
                n_rows += bool(row)
                if row and len(row) != len(header):
                    raise HeadscopeError(
                        f"task file {p} line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                        f"({', '.join(header)}): quote fields that contain commas."
                    )
        except csv.Error as exc:
            raise HeadscopeError(f"task file {p} is not valid CSV near line {reader.line_num} ({exc}): "
                                 "check for an unbalanced quote (\").") from None
        if not n_rows:
            raise HeadscopeError(f"task file {p} has a header but no rows.")


def read_rows(path: str | Path) -> dict[str, list[Any]]:
    """Read a table with ``datasets`` and check its columns; returns column -> values.

    ``datasets`` caches what it reads under a key made of the file's path and modification
    time, so a file edited in place within the same second (or copied with its time kept)
    could come back stale. The cache is therefore keyed on the file's *content* (its SHA-256
    names the ``datasets`` config).
    """
    import hashlib

    p = Path(path).expanduser()
    if p.is_dir():
        raise HeadscopeError(f"task file {p} is a directory: pass -o path=FILE.csv|json|jsonl|parquet.")
    if not p.is_file():
        raise HeadscopeError(f"task file {p} does not exist: pass -o path=FILE.csv|json|jsonl|parquet.")
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise HeadscopeError(f"task file {p} must end in {', '.join(FORMATS)}; got '{p.suffix}'.")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise HeadscopeError(f"cannot read task file {p}: {exc.strerror or exc}.") from None
    check_syntax(p, raw)
    import datasets

    digest = hashlib.sha256(raw).hexdigest()[:32]
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one small file: no "Generating train split" bars on stderr
    try:
        ds = datasets.load_dataset(fmt, data_files=str(p), split="train", name=f"headscope-{digest}")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HeadscopeError(f"cannot read task file {p} as {fmt}: {first}") from None
    finally:
        if shown:
            datasets.enable_progress_bars()
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
