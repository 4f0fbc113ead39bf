"""headscope's own task datasets: the JSON files in the repository's top-level ``data/``.

IOI templates and names, needles, country-capital facts, MAPS relations, MCQA questions and
the harmful/harmless requests were written for headscope; each file says so in its ``_source``
field (see ``data/README.md``). A built wheel carries them as the package ``headscope.data``
(``pyproject.toml`` maps ``headscope.data`` to ``data/``); a checkout or an editable install
reads them from ``data/`` beside the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headscope.errors import HeadscopeError

_PACKAGE = Path(__file__).resolve().parent
SEARCH = (_PACKAGE / "data", _PACKAGE.parent / "data")  # installed wheel, then checkout


def data_path(name: str) -> Path:
    """The path of the bundled data file ``name`` (e.g. ``"mcqa.json"``)."""
    for base in SEARCH:
        if (base / name).is_file():
            return base / name
    raise HeadscopeError(
        f"headscope's data file {name} is missing (looked in {', '.join(map(str, SEARCH))}): reinstall headscope."
    )


def load_json(name: str) -> Any:
    """The parsed JSON of the bundled data file ``name``."""
    return json.loads(data_path(name).read_text(encoding="utf-8"))
