"""Activation patching (z, q, k, v) and path patching equal raw HF patching by module hooks.

Inputs (see ``conftest.Prompts``): clean and corrupted prompts share their first 5 tokens and
have ragged END positions (right padding), all longer than the sliding window, so the engine's
END-group windows, layer-prefix truncation and shared-prefix KV reuse are all exercised.
"""

from __future__ import annotations

import pytest
import torch

from headscope.patching import PatchEngine, patch_all_heads
from headscope.patching.paths import Receivers, path_patch

from .conftest import REFUSED, assert_close
from .raw_hf import logit_diff


def _metric(raw_run, batch) -> torch.Tensor:
    return logit_diff(raw_run.logits, batch.end, batch.answer, batch.wrong)


def _metric_k(raw_run, batch, k: int) -> torch.Tensor:
    """(k, n) metric of a batch repeated k times."""
    return logit_diff(raw_run.logits, batch.end.repeat(k), batch.answer.repeat(k), batch.wrong.repeat(k)).view(k, -1)


def _slice_per_unit(units: list[int], source: torch.Tensor):  # noqa: ANN202
    """Edit for a batch repeated ``len(units)`` times: slice i gets ``source`` at unit i."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        view = x.view(len(units), -1, *x.shape[1:])
        for i, unit in enumerate(units):
            view[i, :, :, unit] = source[:, :, unit]
        return x

    return fn


@pytest.mark.capability("activation_patching_{act}")
@pytest.mark.parametrize("act", ["z", "q", "k", "v"])
def test_activation_patching(family, act, pair, prompts, hs_call):
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    res = hs_call(lambda: patch_all_heads(engine, batch.clean, batch.corrupted, act=act))
    if res is REFUSED:
        return
    clean = raw.run(batch.clean)
    assert_close(res.clean, _metric(clean, batch), "clean logit difference")
    assert_close(res.corrupted, _metric(raw.run(batch.corrupted), batch), "corrupted logit difference")
    n_units = raw.n_kv if act in ("k", "v") else raw.n_heads
    source = getattr(clean, act)
    want = torch.empty(raw.n_layers, n_units, batch.n)
    stacked = batch.corrupted.repeat(n_units, 1)  # one slice per unit, one forward per layer
    for layer in range(raw.n_layers):
        edit = _slice_per_unit(list(range(n_units)), source[layer])
        run = raw.run(stacked, z_edit={layer: edit}) if act == "z" else raw.run(stacked, proj_edit={(act, layer): edit})
        want[layer] = _metric_k(run, batch, n_units)
    assert_close(res.values[:, :, 0], want, f"patched {act} logit difference (layer, unit, row)")


@pytest.mark.capability("path_patching_{receivers}")
@pytest.mark.parametrize("receivers", ["resid", "q", "q_at_END"])
def test_path_patching(family, receivers, pair, prompts, hs_call):
    """Wang et al. 2022 App. B. Pass 2 (clean input): sender := corrupted z, every other head
    frozen to its clean z, MLPs and norms recomputed; the metric is read there (receivers =
    logits) or the receivers' q is recorded there (receivers = heads 0 and 2 of the last
    layer) and written into a free clean run (pass 3), at every position or, as for Wang et
    al.'s name movers, at each row's END only."""
    batch, raw = prompts.batch, pair.raw
    # receivers in the last layer; for END-only receivers one layer earlier, so that their
    # inputs at other positions could still reach END (and patching them there would show)
    top = raw.n_layers - (2 if receivers == "q_at_END" else 1)
    rec_heads = [0, 2]
    rec = Receivers() if receivers == "resid" else Receivers("q", tuple((top, h) for h in rec_heads))
    at_end = receivers == "q_at_END"
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    res = hs_call(lambda: path_patch(engine, batch.clean, batch.corrupted, rec, receiver_pos=batch.end if at_end else None))
    if res is REFUSED:
        return
    clean, corrupted = raw.run(batch.clean), raw.run(batch.corrupted)
    last = raw.n_layers if receivers == "resid" else top  # senders before the receivers
    want = torch.full((raw.n_layers, raw.n_heads, batch.n), float("nan"))
    k = raw.n_heads
    stacked = batch.clean.repeat(k, 1)  # slice i: sender head i
    for layer in range(last):
        edits = {}
        for later in range(layer, last):
            def freeze(z: torch.Tensor, later: int = later, layer: int = layer) -> torch.Tensor:
                z = clean.z[later].repeat(k, 1, 1, 1)  # every head frozen to its clean z
                if later == layer:  # ... except the sender, set to its corrupted z
                    _slice_per_unit(list(range(k)), corrupted.z[layer])(z)
                return z

            edits[later] = freeze
        run = raw.run(stacked, z_edit=edits)
        if receivers != "resid":
            recorded = run.q[top]

            def receive(q: torch.Tensor, recorded: torch.Tensor = recorded) -> torch.Tensor:
                rows, ends = torch.arange(q.shape[0]), batch.end.repeat(k)
                for h in rec_heads:
                    if at_end:
                        q[rows, ends, h] = recorded[rows, ends, h]
                    else:
                        q[:, :, h] = recorded[:, :, h]
                return q

            run = raw.run(stacked, proj_edit={("q", top): receive})
        want[layer] = _metric_k(run, batch, k)
    assert_close(res.clean, _metric(clean, batch), "clean logit difference")
    assert_close(res.values[:last], want[:last], f"path-patched logit difference (sender layer, head, row), receivers {rec.describe()}")
    assert torch.isnan(res.values[last:]).all(), "senders at or after the receivers' layer must be NaN"
