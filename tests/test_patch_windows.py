"""Position windows in the patching engine (END groups + shared-prefix KV reuse) are exact.

Every windowed result is compared with the same engine run full-width (``windows=False``) on
batches built so that windows matter: ragged ENDs (right padding) and a shared token prefix.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from headscope import load_model
from headscope.patching import PatchEngine, Receivers, patch_all_heads, path_patch
from headscope.patching.engine import shared_prefix


@pytest.fixture(scope="module", params=["toy-gqa", "toy-induction"])
def model(request):
    return load_model(request.param)


def _batch(model, n: int = 6, pos: int = 9, prefix: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.cfg.d_vocab)
    clean = torch.randint(1, vocab, (n, pos), generator=g)
    corrupted = torch.randint(1, vocab, (n, pos), generator=g)
    corrupted[:, :prefix] = clean[:, :prefix]
    end = torch.tensor([pos - 1 - (i % 4) for i in range(n)])  # ragged: ENDs pos-1 .. pos-4
    for i, e in enumerate(end.tolist()):  # right padding after END
        clean[i, e + 1:] = 0
        corrupted[i, e + 1:] = 0
    answer = torch.randint(1, vocab, (n,), generator=g)
    wrong = torch.randint(1, vocab, (n,), generator=g)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        k = logits.shape[0] // n
        rows = torch.arange(logits.shape[0])
        return logits[rows, answer.repeat(k)] - logits[rows, wrong.repeat(k)]

    return clean, corrupted, end, metric


def test_shared_prefix_counts_agreeing_columns() -> None:
    a = torch.tensor([[1, 2, 3, 4], [1, 5, 6, 7]])
    b = torch.tensor([[1, 2, 9, 4], [1, 5, 6, 0]])
    assert shared_prefix(a, b) == 2
    assert shared_prefix(a, a) == 4
    assert shared_prefix(a, a + 1) == 0


def test_end_groups_cover_every_row_once(model) -> None:
    _, _, end, metric = _batch(model, n=8)
    for overhead, expect_groups in ((0, 4), (10**9, 1)):
        engine = PatchEngine(model, end, metric, forward_overhead_tokens=overhead)
        groups = engine.end_groups(prefix=2, k=3)
        assert len(groups) == expect_groups
        rows = torch.cat([r for r, _ in groups]).sort().values
        assert rows.tolist() == list(range(8))
        for r, hi in groups:  # a window reaches every END in its group, and no further
            assert int(end[r].max()) + 1 == hi


@pytest.mark.parametrize("act", ["z", "q", "k", "v", "pattern"])
def test_windowed_head_patching_equals_full_width(model, act) -> None:
    clean, corrupted, end, metric = _batch(model)
    full = PatchEngine(model, end, metric, windows=False)
    win = PatchEngine(model, end, metric, forward_overhead_tokens=0)  # one group per END
    assert len(win.end_groups(3, 1)) == 4
    with torch.inference_mode():
        for positions in (None, "each"):
            a = patch_all_heads(full, clean, corrupted, act, positions=positions).values
            b = patch_all_heads(win, clean, corrupted, act, positions=positions).values
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-4, (act, positions)
            # the patches are not all no-ops: some head moves the metric
            base = patch_all_heads(full, clean, clean, act, positions=positions).values
            assert (a - base).abs().max() > 1e-3


def test_windowed_path_patching_equals_full_width(model) -> None:
    clean, corrupted, end, metric = _batch(model, seed=1)
    full = PatchEngine(model, end, metric, windows=False)
    win = PatchEngine(model, end, metric, forward_overhead_tokens=0)
    receivers = [Receivers(), Receivers("q", ((model.n_layers - 1, 0),))]
    with torch.inference_mode():
        for rec in receivers:
            a = path_patch(full, clean, corrupted, rec).values
            b = path_patch(win, clean, corrupted, rec).values
            ok = ~a.isnan()
            assert ok.any() and bool((ok == ~b.isnan()).all())
            assert (a[ok] - b[ok]).abs().max() <= 1e-4, rec.describe()
