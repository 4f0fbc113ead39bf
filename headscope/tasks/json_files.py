"""Reading a user's JSON / JSONL task file with one-line errors (line and column) instead of a
``JSONDecodeError`` traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headscope.errors import HeadscopeError


def read_json(path: Path, what: str, expected: str) -> Any:
    """The parsed JSON of ``path``; ``what`` names the file (e.g. ``"MCQA file"``) and
    ``expected`` says what it should hold, for the message."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else " (not UTF-8)"
        raise HeadscopeError(f"{what} {path} is not JSON{where}: give {expected}.") from None


def read_jsonl(path: Path, what: str) -> list[Any]:
    """One parsed JSON value per non-empty line of ``path``."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise HeadscopeError(f"{what} {path} is not UTF-8 text: save it as UTF-8.") from None
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise HeadscopeError(f"{what} {path} line {n} is not valid JSON ({exc.msg}, column {exc.colno}).") from None
    return rows
