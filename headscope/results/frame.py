"""``ProvenanceFrame``: a ``pandas.DataFrame`` subclass whose provenance dict lives in ``df.attrs``.

The base of :class:`~headscope.results.HeadScores` and :class:`~headscope.results.edge_scores.EdgeScores`:
pandas operations keep the subclass (``_constructor``) and ``attrs`` (so the provenance), and the
Parquet writer stores ``.provenance`` in the schema metadata.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


class ProvenanceFrame(pd.DataFrame):
    """A DataFrame that keeps its own type through pandas operations and carries ``.provenance``."""

    _metadata: list[str] = []

    @property
    def _constructor(self) -> type[ProvenanceFrame]:
        return type(self)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.attrs.setdefault("provenance", {})

    @provenance.setter
    def provenance(self, value: dict[str, Any]) -> None:
        self.attrs["provenance"] = dict(value)
