"""MAPS with ``preset=paper`` equals the reference code's computation (Elhelo & Geva 2024,
``src/maps.py``: ``calc_relation_scores``, ``ov_project``, ``calc_relation_score``), written here
from raw Hugging Face modules and weights: layer-0 heads read raw ``W_E`` rows, later heads the
first MLP on ``ln2(W_E)``; the input norm's weight is folded into ``W_V`` (no normalisation, no
centring: TransformerLens ``fold_ln``), the head output passes the linear part of the
post-attention norm (sandwich families) and of the final norm (LayerNorm centres: TransformerLens
``center_writing_weights``) before ``W_U``; a pair counts when its target is among the row's top
k (k = 1 for copying, 10 otherwise); suppression uses the negated row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.analyzers.registry import run_analyzer
from headscope.tasks import make_task

from .conftest import REFUSED


def _folded(raw, module, v: torch.Tensor) -> torch.Tensor:
    """``v`` times the norm's elementwise multiplier (its weight; ``1 + weight`` on Gemma)."""
    if isinstance(module, torch.nn.LayerNorm):
        return v * module.weight.detach()
    with torch.inference_mode():
        return module(v) * raw.norm_scale(module, v)


def _linear_part(raw, module, v: torch.Tensor) -> torch.Tensor:
    """The norm's linear part (centring for LayerNorm, then the multiplier), scale and bias dropped."""
    bias = raw.norm_bias(module)
    with torch.inference_mode():
        return (module(v) - (bias if bias is not None else 0.0)) * raw.norm_scale(module, v)


def _reference(raw, src: torch.Tensor, tgt: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    w_e = raw.embed_weight()[src]
    with torch.inference_mode():
        pre = raw.pre_mlp_norm(0)
        later = raw.mlp(0)(pre(w_e) if pre is not None else w_e)
    w_u = raw.lm_head.weight.detach()
    scores = np.zeros((raw.n_layers, raw.n_heads))
    supp = np.zeros_like(scores)
    for layer in range(raw.n_layers):
        x = w_e if layer == 0 else later
        norm = raw.input_norm(layer)
        x = _folded(raw, norm, x) if norm is not None else x
        for head in range(raw.n_heads):
            z = torch.zeros(len(src), raw.n_heads, raw.d_head)
            z[:, head] = x @ raw.w_v(layer, head // raw.group)
            o = raw.head_out(layer, z)[:, head]
            if raw.post_norms:
                o = _linear_part(raw, raw.post_attn_norm(layer), o)
            logits = _linear_part(raw, raw.final_norm, o) @ w_u.T
            for sign, out in ((1, scores), (-1, supp)):
                top = torch.topk(sign * logits, k).indices
                out[layer, head] = float((top == tgt.unsqueeze(1)).any(1).float().mean())
    return scores, supp


@pytest.mark.capability("maps_paper_{relation}")
@pytest.mark.parametrize("relation", ["copying", "successor"])
def test_maps_paper_preset(family, pair, hs_call, relation):
    task = make_task("relation", relation=relation)
    got = hs_call(lambda: run_analyzer("maps", pair.hs, task, preset="paper"))
    if got is REFUSED:
        return
    src, tgt, _ = task.pairs(pair.hs)
    k = 1 if relation == "copying" else 10
    want, want_supp = _reference(pair.raw, torch.tensor(src), torch.tensor(tgt), k)
    assert got.provenance["choices"]["top_k"] == k
    np.testing.assert_array_equal(got.matrix("maps").to_numpy(), want)
    np.testing.assert_array_equal(got.matrix("maps_suppression").to_numpy(), want_supp)
    assert want.max() > 0 or want_supp.max() > 0  # the scores are not trivially zero
