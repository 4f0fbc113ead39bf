"""Output paths the CLI commands share: checked before any work, named from the run."""

from __future__ import annotations

import os
import re
from pathlib import Path

from headscope.errors import HeadscopeError


def slug(text: str) -> str:
    """A file-name-safe form of a model spec or name (``HuggingFaceTB/x`` -> ``HuggingFaceTB-x``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name if os.sep in text else text).strip("-")


def check_output(path: Path, suffix: str, flag: str) -> Path:
    """Check an output path before any work: its suffix, that it is not a directory, and that
    its directory (or the nearest existing ancestor, for one that will be created) is writable.
    Creates nothing: directories are made when the file is written."""
    from headscope.results.atomic import check_writable_dir

    path = path.expanduser()
    if path.suffix != suffix:
        raise HeadscopeError(f"{flag} {path} should end in {suffix}: e.g. {flag} results{suffix}.")
    if path.is_dir():
        raise HeadscopeError(f"{flag} {path} is a directory: give a file name ending in {suffix}.")
    check_writable_dir(path.parent, f"{path} ({flag})")
    return path
