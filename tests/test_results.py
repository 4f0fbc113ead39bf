"""HeadScores schema, helpers, and atomic Parquet I/O with provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from headscope.errors import HeadscopeError
from headscope.results import REQUIRED_COLUMNS, HeadScores, read_parquet


def _scores() -> HeadScores:
    values = np.arange(12, dtype=float).reshape(3, 4) / 10
    a = HeadScores.from_matrix(values, model="m", task="t", analyzer="a", metric="x",
                               extra={"stderr": values / 100, "n": 5})
    b = HeadScores.from_matrix(-values, model="m", task="t", analyzer="a", metric="y")
    return HeadScores.concat([a, b], provenance={"seed": 3, "nested": {"k": [1, 2]}})


def test_schema_and_labels() -> None:
    s = _scores()
    assert isinstance(s, pd.DataFrame)
    assert all(c in s.columns for c in REQUIRED_COLUMNS)
    assert s["layer"].dtype.kind == "i" and s["head"].dtype.kind == "i"
    assert len(s) == 2 * 12
    row = s[(s["metric"] == "x") & (s["layer"] == 2) & (s["head"] == 1)].iloc[0]
    assert row.label == "2.1" and row.score == pytest.approx(0.9)


def test_top_matrix_heads() -> None:
    s = _scores()
    top = s.top(3, metric="x")
    assert list(top["label"]) == ["2.3", "2.2", "2.1"]
    assert isinstance(top, HeadScores)
    assert list(s.top(1, metric="y", absolute=True)["label"]) == ["2.3"]
    m = s.matrix("x")
    assert m.shape == (3, 4) and m.loc[1, 2] == pytest.approx(0.6)
    assert s.heads("x", threshold=0.95) == [(2, 3), (2, 2)]
    assert s.heads("x", k=2) == [(2, 3), (2, 2)]
    with pytest.raises(HeadscopeError, match="Did you mean 'x'"):
        s.top(1, metric="xx")


def test_parquet_roundtrip_keeps_provenance(tmp_path) -> None:
    s = _scores()
    path = s.to_parquet(tmp_path / "sub" / "r.parquet")
    back = read_parquet(path)
    assert isinstance(back, HeadScores)
    assert back.provenance == {"seed": 3, "nested": {"k": [1, 2]}}
    pd.testing.assert_frame_equal(pd.DataFrame(back), pd.DataFrame(s).reset_index(drop=True))


def test_write_is_atomic(tmp_path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    s = _scores()
    target = tmp_path / "r.parquet"
    s.to_parquet(target)
    before = target.read_bytes()

    def broken(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        s.to_parquet(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]


def test_read_errors(tmp_path) -> None:
    with pytest.raises(HeadscopeError, match="no such results file"):
        read_parquet(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(HeadscopeError, match="not a readable Parquet"):
        read_parquet(bad)
    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(other)
    with pytest.raises(HeadscopeError, match="not a headscope result"):
        read_parquet(other)
