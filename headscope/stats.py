"""Statistics shared across layers: the one Spearman rank correlation.

Every Spearman in headscope goes through :func:`spearman` (head comparisons in
:mod:`headscope.report.compare`, edge overlaps in :mod:`headscope.circuits.overlap`, the
attribution-vs-exact check :func:`headscope.patching.attribution.rank_correlation`). Ties get
average ranks (pandas ``rank(method="average")``, as ``scipy.stats.spearmanr``), O(n log n).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def spearman(a: np.ndarray, b: np.ndarray, min_pairs: int = 3) -> float:
    """Spearman rank correlation of the finite pairs of ``a`` and ``b`` (average ranks for
    ties): the Pearson correlation of the ranks. NaN with fewer than ``min_pairs`` finite pairs
    or when either side is constant."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two arrays of one size; got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < min_pairs:
        return float("nan")
    ra = pd.Series(a[ok]).rank(method="average").to_numpy()
    rb = pd.Series(b[ok]).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if norm == 0.0:
        return float("nan")
    return float((ra * rb).sum() / norm)
