"""One Spearman (issue 23 #13): average ranks for ties, O(n log n), every call site through stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headscope.patching.attribution import rank_correlation
from headscope.stats import spearman


def test_ties_match_the_hand_formula() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: sum dx*dy = 4.5, |dx|^2 = 4.5, |dy|^2 = 5
    x, y = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])
    want = 4.5 / math.sqrt(4.5 * 5.0)
    assert spearman(x, y) == pytest.approx(want, abs=1e-12)
    assert rank_correlation(torch.tensor(x), torch.tensor(y)) == pytest.approx(want, abs=1e-12)
    assert rank_correlation(torch.ones(4), torch.tensor(y)) is None
    assert math.isnan(spearman(np.ones(4), y))


def test_matches_scipy_on_tied_data() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 7, 500).astype(float), rng.integers(0, 5, 500).astype(float)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_many_ties_equal_pandas_average_ranks() -> None:
    """70,000 heavily tied values (the old per-tie-value loop took minutes here; speed is not timed
    in unit tests): equal to Pearson on pandas average ranks, computed here by hand."""
    import pandas as pd

    rng = np.random.default_rng(0)
    a = rng.integers(0, 30_000, 70_000).astype(float)
    b = a + rng.normal(size=70_000)
    ra, rb = pd.Series(a).rank(method="average").to_numpy(), pd.Series(b).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    want = float(ra @ rb / np.sqrt((ra @ ra) * (rb @ rb)))
    assert rank_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(want, abs=1e-9)
