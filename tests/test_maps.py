"""MAPS relation scores: planted copying/successor heads, relation files, salient mappings, SmolLM2 vs the OV test."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

import headscope
from headscope.analyzers import run_analyzer
from headscope.analyzers.maps import salient_mappings
from headscope.errors import HeadscopeError
from headscope.tasks import make_task
from headscope.toy import TOY_MODELS


@pytest.fixture(scope="module")
def copying():
    return headscope.load_model("toy-copying")


def test_planted_copying_head_tops_copying_relation(copying):
    scores = run_analyzer("maps", copying, make_task("relation", relation="copying"))
    (planted,) = TOY_MODELS["toy-copying"].planted["copying"]
    assert scores.heads("maps", k=1) == [planted]
    m = scores.matrix("maps")
    assert m.loc[planted[0], planted[1]] == 1.0
    # the permutation head maps every token to another token: its top token is never the source
    # (its other logits tie up to rounding, so the top-10 score is left to tie-breaking)
    assert scores.matrix("maps_rank1").loc[0, 0] == 0.0
    # (the paper preset is checked against the reference computation in tests/conformance; on this
    # toy its later-layer embedding MLP0(ln2(W_E)) is empty, since the toy's MLPs are zero)
    assert scores.provenance["choices"]["pairs_kept"] == scores["n"].iloc[0]


def test_planted_successor_head_tops_successor_relation():
    model = headscope.load_model("toy-successor")
    scores = run_analyzer("maps", model, make_task("relation", relation="successor"))
    (planted,) = TOY_MODELS["toy-successor"].planted["successor"]
    (distractor,) = TOY_MODELS["toy-successor"].planted["copying"]
    assert scores.heads("maps", k=1) == [planted]
    m = scores.matrix("maps")
    assert m.loc[distractor[0], distractor[1]] < 0.2
    copy = run_analyzer("maps", model, make_task("relation", relation="copying"))
    assert copy.heads("maps", k=1) == [distractor]


def test_user_relation_files_and_errors(copying, tmp_path):
    pj = tmp_path / "r.json"
    pj.write_text(json.dumps({"pairs": [["one", "one"], ["two", "two"], ["zzz-not-a-word", "one"]]}))
    task = make_task("relation", path=str(pj))
    src, tgt, skipped = task.pairs(copying)
    assert len(src) == 2 and skipped == 1
    pc = tmp_path / "r.csv"
    pc.write_text("source,target\none,one\nMay,May\n")
    assert run_analyzer("maps", copying, make_task("relation", path=str(pc))).heads("maps", k=1) == [(1, 1)]
    with pytest.raises(HeadscopeError, match="unknown relation"):
        make_task("relation", relation="copyng").pairs(copying)


def test_salient_mappings_of_copying_head_are_identity(copying):
    ids = [copying.single_token(w) for w in ("one", "two", "May", "Friday")]
    df = salient_mappings(copying, [(1, 1), (0, 0)], ids, n=4)
    cp = df[(df["layer"] == 1) & (df["head"] == 1)]
    assert len(cp) == 4
    assert (cp["source_id"] == cp["target_id"]).all()
    perm = df[(df["layer"] == 0) & (df["head"] == 0)]
    assert len(perm) == 4
    assert (perm["source_id"] != perm["target_id"]).all()


def test_cli_operations_lists_successor_mappings(tmp_path):
    import pandas as pd

    from headscope.cli.app import main
    from headscope.toy.vocab import SUCCESSOR_PAIRS

    out = tmp_path / "ops.parquet"
    main(["lens", "operations", "--model", "toy-successor", "--heads", "1.0", "--relation", "successor", "--n", "5", "--out", str(out)])
    df = pd.read_parquet(out)
    assert len(df) == 5
    succ = {pair for pairs in SUCCESSOR_PAIRS.values() for pair in pairs}
    assert all((r.source, r.target) in succ for r in df.itertuples())
