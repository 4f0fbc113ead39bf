"""``sender_delta=pre_norm`` (preset ``paper``) of ``eap`` / ``eap_ig`` is hannamw/EAP-IG's score.

The reference (``src/eap/utils.py`` ``make_hooks_and_matrices``; ``src/eap/attribute.py``
``get_scores_eap`` L44-100, ``get_scores_eap_ig`` L102-183) scores an edge ``s -> r`` as
``sum_{batch, pos, d} activation_difference[s] * grad_r``: corrupted minus clean of the sender's
``out_hook`` (a head's ``hook_result``, before the post-attention norm) times the gradient at the
receiver's input hook, summed per run and averaged over runs. Both factors are written here with
raw Hugging Face hooks (:mod:`raw_eap`): the per-head differences from ``o_proj``'s input and
weight, the gradients from zero-valued leaves at each receiver's read of the residual. Nothing
comes from headscope or from :func:`raw_edges.sender_deltas` (headscope's post-norm convention).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from headscope.circuits.graph import EdgeGraph
from headscope.circuits.methods import run_circuit_method
from headscope.errors import HeadscopeError

from .conftest import assert_close
from .raw_eap import raw_receiver_grads, reference_deltas
from .raw_edges import FixedTask, _replace_input

POST_NORM = ["gemma2", "gemma3", "olmo2"]


def reference_scores(raw: Any, batch: Any, graph: EdgeGraph, embeddings: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(len(graph.edges),) the reference's scores by raw HF: ``get_scores_eap`` (``embeddings``
    None: one clean run) or ``get_scores_eap_ig`` (one clean run per entry of ``embeddings``,
    the hidden states entering layer 0 replaced by it; gradients averaged over the runs)."""
    deltas = reference_deltas(raw, batch.clean, batch.corrupted)
    receivers = list(graph.receivers)

    def hold(value: torch.Tensor | None):  # noqa: ANN202
        def register() -> list[Any]:
            if value is None:
                return []
            put = _replace_input(lambda x: value.clone())
            return [raw.layers[0].register_forward_pre_hook(put, with_kwargs=True)]

        return register

    points: list[torch.Tensor | None] = [None] if embeddings is None else list(embeddings)
    total = {r.key: torch.zeros(*batch.clean.shape, raw.d_model) for r in receivers}
    for value in points:
        for key, g in raw_receiver_grads(raw, batch, receivers, hold(value)).items():
            total[key] += g
    return torch.stack([(deltas[e.sender.name] * total[e.receiver.key]).sum() / len(points) for e in graph.edges])


def _layer0_input(raw: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The hidden states entering the first decoder layer (the reference's ``hook_embed``), (b, p, d)."""
    got: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> torch.Tensor:
        got.append(x.detach().clone())
        return x

    handle = raw.layers[0].register_forward_pre_hook(_replace_input(keep), with_kwargs=True)
    try:
        with torch.inference_mode():
            raw.model(input_ids=tokens, use_cache=False)
    finally:
        handle.remove()
    return got[0]


def _scores(res: Any) -> torch.Tensor:
    return torch.tensor(res["score"].to_numpy(), dtype=torch.float32)


def _tol(want: torch.Tensor) -> float:
    return 1e-4 + 1e-4 * float(want.abs().max())


@pytest.mark.parametrize("fam", [*POST_NORM, "llama"])
def test_paper_eap_is_the_reference(fam, zoo_cache, prompts):
    """``eap`` with ``preset=paper`` equals the reference's EAP by raw HF on every edge, also per
    position (``positions=each`` rows summed over positions)."""
    pair, batch = zoo_cache[fam], prompts.batch
    graph = EdgeGraph.of(pair.hs)
    want = reference_scores(pair.raw, batch, graph)
    assert want.abs().max() > 1e-2, "the reference scores should not vanish"
    res = run_circuit_method("eap", pair.hs, FixedTask(batch), preset="paper")
    assert res.provenance["options"]["sender_delta"] == "pre_norm"
    assert_close(_scores(res), want, f"{fam} EAP paper vs raw reference over {len(want)} edges", tol=_tol(want))
    each = run_circuit_method("eap", pair.hs, FixedTask(batch), sender_delta="pre_norm", positions="each")
    by_pos = _scores(each).view(len(graph.edges), -1).sum(1)
    assert_close(by_pos, want, f"{fam} EAP pre_norm per position, summed, vs raw reference", tol=_tol(want))


@pytest.mark.parametrize("fam", POST_NORM)
def test_paper_eap_ig_is_the_reference(fam, zoo_cache, prompts):
    """``eap_ig`` with ``preset=paper`` (5 steps, input interpolation, k = 0..4, pre-norm head
    differences) equals the reference's ``get_scores_eap_ig`` by raw HF: the embedding
    ``corrupted + k/5 (clean - corrupted)`` (L151) entering layer 0, everything after it
    recomputed, gradients at the receivers averaged over the 5 runs."""
    pair, batch = zoo_cache[fam], prompts.batch
    graph = EdgeGraph.of(pair.hs)
    clean, corr = _layer0_input(pair.raw, batch.clean), _layer0_input(pair.raw, batch.corrupted)
    steps = 5
    want = reference_scores(pair.raw, batch, graph, [corr + (k / steps) * (clean - corr) for k in range(steps)])
    assert want.abs().max() > 1e-2, "the reference scores should not vanish"
    res = run_circuit_method("eap_ig", pair.hs, FixedTask(batch), preset="paper")
    prov = res.provenance
    assert prov["options"]["sender_delta"] == "pre_norm" and prov["preset_options"]["sender_delta"] == "pre_norm"
    assert "before the post-attention norm" in prov["choices"]["sender_delta"]
    assert_close(_scores(res), want, f"{fam} EAP-IG paper vs raw reference over {len(want)} edges", tol=_tol(want))


@pytest.mark.parametrize("fam", [*POST_NORM, "llama"])
def test_default_differs_from_pre_norm_only_on_post_norm_families(fam, zoo_cache, prompts):
    """The documented difference: on Gemma-2/3 and OLMo-2 the default ``post_norm`` scores of
    edges out of heads are not the reference's (edges out of the embedding and MLPs are the same
    numbers); on Llama (no post-attention norm) the two conventions agree on every edge."""
    pair, batch = zoo_cache[fam], prompts.batch
    graph = EdgeGraph.of(pair.hs)
    task = FixedTask(batch)
    post, pre = (_scores(run_circuit_method("eap", pair.hs, task, sender_delta=d)) for d in ("post_norm", "pre_norm"))
    heads = torch.tensor([e.sender.kind == "head" for e in graph.edges])
    assert torch.equal(post[~heads], pre[~heads]), "edges out of the embedding and MLPs must not change"
    gap = float((post[heads] - pre[heads]).abs().max())
    if fam == "llama":
        assert_close(post, pre, "llama: post_norm vs pre_norm", tol=1e-5 + 1e-5 * float(pre.abs().max()))
        assert "same as post_norm" in run_circuit_method("eap", pair.hs, task, preset="paper").provenance["choices"]["sender_delta"]
    else:
        assert gap > 1e-2 * float(pre.abs().max()), f"{fam}: post_norm and pre_norm should differ (max gap {gap:.3g})"


def test_bad_sender_delta_is_one_line(zoo_cache, prompts):
    with pytest.raises(HeadscopeError, match="sender_delta must be one of post_norm, pre_norm") as info:
        run_circuit_method("eap_ig", zoo_cache["llama"].hs, FixedTask(prompts.batch), sender_delta="prenorm")
    assert "\n" not in str(info.value)
