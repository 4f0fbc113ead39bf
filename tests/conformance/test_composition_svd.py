"""The low-rank view of head composition (Merullo et al. 2024) against hand computations.

The writer's OV and the reader's maps are built here from the raw Hugging Face weights (the
helpers of ``test_edges``: per-head W_Q/W_K/W_V/W_O, ln1 as ``centre * weight``), decomposed with
``torch.linalg.svd`` of the full (d, d) matrix, and each rank-1 component scored by hand.
"""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.circuits.composition import CompositionWeights
from headscope.circuits.composition_svd import composition_svd
from headscope.circuits.graph import kv_name
from headscope.toy.zoo import build_zoo_hf

from .conftest import assert_close
from .test_edges import _hf_head_weights, _hf_norm


def _hand_maps(raw, layer_w: int, writer: int, layer_r: int, unit: int, kind: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(OV_A (d, d), [X_h (d, d)]) from HF weights: ln1 of the reader, the writer's
    post-attention norm (Gemma-2), Qwen3's q/k-norm weights; k/v readers stack the KV head's
    query heads (repeat-kv: h // group)."""
    wa, wb = _hf_head_weights(raw, layer_w), _hf_head_weights(raw, layer_r)
    ln1 = _hf_norm(raw, raw.input_norm(layer_r))
    post = _hf_norm(raw, raw.post_attn_norm(layer_w)) if raw.post_norms else torch.eye(raw.d_model)
    ov_a = wa["v"][writer // raw.group] @ wa["o"][writer] @ post
    members = [unit] if kind == "q" else [h for h in range(raw.n_heads) if h // raw.group == unit]
    maps = []
    for h in members:
        g = h // raw.group
        wq, wk = ln1 @ wb["q"][h], ln1 @ wb["k"][g]
        if raw.type == "qwen3":
            wq, wk = wq * raw.attn(layer_r).q_norm.weight.detach(), wk * raw.attn(layer_r).k_norm.weight.detach()
        qk = wq @ wk.T
        maps.append({"q": qk, "k": qk.T, "v": ln1 @ wb["v"][g] @ wb["o"][h]}[kind])
    return ov_a.double(), [x.double() for x in maps]


@pytest.mark.parametrize("fam", ["gpt2", "llama", "qwen3", "gemma2"])
def test_components_match_a_hand_svd(fam, zoo_cache):
    """Per component i of ``OV_A = U S V^T`` (torch.linalg.svd of the full matrix): singular value,
    score ``||v_i^T X|| / ||X||``, contribution ``sigma_i ||v_i^T X|| / (||OV_A|| ||X||)``. And the
    identity the docstring states: ``sum_i (sigma_i ||v_i^T X||)^2 = ||OV_A X||_F^2`` by hand, so
    the contributions' squares sum to the hand composition score squared and the fractions to 1."""
    pair = zoo_cache[fam]
    raw, model = pair.raw, pair.hs
    weights = CompositionWeights(model)
    dh, checked = raw.d_head, 0
    for writer in range(raw.n_heads):
        for kind, units in (("q", range(raw.n_heads)), ("k", range(raw.n_kv)), ("v", range(raw.n_kv))):
            for unit in units:
                reader = f"a2.h{unit}" if kind == "q" else kv_name(model, 2, unit)
                got = composition_svd(model, f"a0.h{writer}", reader, kind, weights=weights).sort_values("component")
                ov, maps = _hand_maps(raw, 0, writer, 2, unit, kind)
                _, s, vh = torch.linalg.svd(ov)
                assert float(s[dh:].abs().max()) < 1e-4 * float(s[0]), "OV has rank <= d_head"
                s, v = s[:dh], vh[:dh]  # rows v_i: the residual directions A writes
                read = torch.stack([(v @ x).norm(dim=1) ** 2 for x in maps]).sum(0).sqrt()  # ||v_i^T X||
                x_norm = torch.stack([x.norm() ** 2 for x in maps]).sum().sqrt()
                full_num = torch.stack([(ov @ x).norm() ** 2 for x in maps]).sum().sqrt()  # ||OV_A X||_F
                assert_close((s * read).norm(), full_num, "sum_i n_i^2 = ||OV_A X||^2 (hand)", tol=1e-6 * float(full_num))
                full = full_num / (ov.norm() * x_norm)
                label = f"{fam} a0.h{writer}->{reader}<{kind}>"
                assert got["component"].tolist() == list(range(dh))
                assert_close(torch.tensor(got["singular_value"].values), s.float(), f"{label} singular values", tol=1e-4 * float(s[0]))
                assert_close(torch.tensor(got["score"].values), (read / x_norm).float(), f"{label} component scores", tol=1e-5)
                assert_close(torch.tensor(got["contribution"].values), (s * read / (ov.norm() * x_norm)).float(),
                             f"{label} contributions", tol=1e-5)
                assert_close(torch.tensor(got["contribution"].values ** 2).sum().sqrt(), full.float(),
                             f"{label} sqrt(sum contribution^2) vs the hand composition score", tol=1e-5)
                assert abs(float(got["fraction"].sum()) - 1.0) < 1e-5 and abs(float(got["edge_score"].iloc[0]) - float(full)) < 1e-5
                checked += 1
    assert checked == raw.n_heads * (raw.n_heads + 2 * raw.n_kv)


def test_planted_rank_two_writer_read_in_one_direction(tmp_path):
    """Zoo Llama (GQA) edited: writer a0.h0's OV = 3 a e_p^T + 1 b e_q^T (a, b orthonormal, so
    singular values 3 and 1 with write directions e_p, e_q); reader a1.h0's W_Q has row p zeroed,
    so its query reads e_q (written with the smaller singular value) and not e_p. The top
    component must be SVD component 1 with all of the Q-composition; component 0 scores 0."""
    model, tokenizer = build_zoo_hf("llama", seed=0)
    d, dh = model.config.hidden_size, model.config.head_dim
    p, q = 5, 17
    gen = torch.Generator().manual_seed(0)
    a, b = torch.linalg.qr(torch.randn(d, 2, generator=gen))[0].T
    with torch.no_grad():
        attn0, attn1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        attn0.v_proj.weight[:dh] = 0.0  # KV head 0 (read by query heads 0 and 1)
        attn0.v_proj.weight[0], attn0.v_proj.weight[1] = a, b
        attn0.o_proj.weight[:, :dh] = 0.0  # query head 0's W_O rows
        attn0.o_proj.weight[p, 0], attn0.o_proj.weight[q, 1] = 3.0, 1.0
        attn1.q_proj.weight[:dh, p] = 0.0  # reader a1.h0's W_Q row p (x @ W_Q)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    hs_model = hs.load_model(str(tmp_path))
    got = composition_svd(hs_model, "a0.h0", "a1.h0", "q")
    top, by_index = got.iloc[0], got.set_index("component")
    assert int(top["component"]) == 1 and abs(float(top["singular_value"]) - 1.0) < 1e-5, got
    assert float(top["fraction"]) > 1 - 1e-6 and abs(float(top["contribution"]) - float(top["edge_score"])) < 1e-6
    assert abs(float(by_index.loc[0, "singular_value"]) - 3.0) < 1e-5
    assert float(by_index.loc[0, "score"]) < 1e-5 and float(by_index.loc[0, "fraction"]) < 1e-10
    assert float(by_index.loc[2:, "singular_value"].max()) < 1e-5  # rank 2
    # the reader's query reads e_q: its component score is ||e_q^T QK|| / ||QK|| by hand
    attn = model.model.layers[1].self_attn
    ln1 = model.model.layers[1].input_layernorm.weight.detach()
    qk = (ln1[:, None] * attn.q_proj.weight[:dh].detach().T) @ (ln1[:, None] * attn.k_proj.weight[:dh].detach().T).T
    assert abs(float(top["score"]) - float(qk[q].norm() / qk.norm())) < 1e-5
    assert len(composition_svd(hs_model, "a0.h0", "a1.h0", "q", rank=2)) == 2
