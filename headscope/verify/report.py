"""What ``headscope verify`` reports: one row per (capability, check), and the whole report.

Statuses:

- ``PASS``: headscope agrees with the independent raw Hugging Face reference within tolerance;
- ``FAIL``: it does not (or headscope crashed with an unexpected error);
- ``REFUSED``: headscope refused with its one-line :class:`~headscope.errors.HeadscopeError`
  (e.g. ``UnsupportedArchitectureError``), the documented safe outcome on an architecture it
  cannot handle exactly, not a failure;
- ``NOT CHECKED``: the reference could not be built on this model (a raw module that could
  not be found or validated); never counted as a pass.

Tolerance: ``|headscope - reference| <= rtol * max(1, max |reference|)``, with ``rtol`` 1e-4 in
float32 and 3e-2 in bfloat16/float16 (both sides then run in half precision). Exact checks
(token ids) use tolerance 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

PASS, FAIL, REFUSED, NOT_CHECKED = "PASS", "FAIL", "REFUSED", "NOT CHECKED"
STATUSES: tuple[str, ...] = (PASS, FAIL, REFUSED, NOT_CHECKED)
COLUMNS: tuple[str, ...] = ("capability", "check", "max_diff", "tolerance", "status", "reason")


def relative_tolerance(dtype: torch.dtype) -> float:
    """``rtol`` for a model in ``dtype`` (see the module docstring)."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


@dataclass
class CheckRow:
    """One check's outcome.

    Attributes:
        capability: the support-matrix column (``trace``, ``dla``, ...).
        check: what was compared, in a few words.
        max_diff: largest absolute difference (NaN when nothing was compared).
        tolerance: the absolute tolerance it was held to (NaN when nothing was compared).
        status: one of :data:`STATUSES`.
        reason: one line: why it was refused / not checked / failed, or a note.
    """

    capability: str
    check: str
    max_diff: float = math.nan
    tolerance: float = math.nan
    status: str = NOT_CHECKED
    reason: str = ""


@dataclass
class VerifyReport:
    """All checks of one ``verify`` run, with what they ran on.

    Attributes:
        model: the model's provenance (:meth:`headscope.models.Model.provenance`).
        rows: one :class:`CheckRow` per check, in run order.
        settings: seed, prompt count and length, sampled heads, tolerance rule, reference.
        seconds: wall time of the checks (model loading excluded).
    """

    model: dict[str, Any]
    rows: list[CheckRow] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """True if any check failed."""
        return any(r.status == FAIL for r in self.rows)

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with columns :data:`COLUMNS`."""
        return pd.DataFrame([asdict(r) for r in self.rows], columns=list(COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (NaN written as null)."""

        def clean(x: float) -> float | None:
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

        rows = [{**asdict(r), "max_diff": clean(r.max_diff), "tolerance": clean(r.tolerance)} for r in self.rows]
        return {
            "model": self.model,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
            "passed": not self.failed,
            "counts": {s: sum(r.status == s for r in self.rows) for s in STATUSES},
            "rows": rows,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
