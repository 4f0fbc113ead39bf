"""Tidy results: one row per (layer, head, metric), saved as Parquet with provenance."""

from headscope.results.atomic import atomic_write
from headscope.results.head_scores import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    HeadScores,
    read_parquet,
)
from headscope.results.provenance import build_provenance

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "HeadScores",
    "atomic_write",
    "build_provenance",
    "read_parquet",
]
