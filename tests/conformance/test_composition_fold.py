"""``writer_norm=fold`` of the composition methods against TransformerLens's folded convention.

Two independent references:

* a hand formula from the raw Hugging Face weights (``test_edges``'s ``_hf_head_weights`` /
  ``_hf_norm``: per-head projections and ln1 as ``centre * weight``, read from the HF modules),
  folded the way TransformerLens's ``ProcessWeights`` does it (transformer_lens/weight_processing.py:
  ``_fold_layer`` multiplies every head's W_Q/W_K/W_V by its ln1 weight, ``center_attention_weights``
  subtracts their mean over d_model on LayerNorm models, ``center_writing_weights`` centres every
  W_O over its output), then TransformerLens's score ``||left right||_F / (||left||_F ||right||_F)``
  (``utilities/matrix.composition_scores``) with ``left = W_V W_O``, ``right = W_Q W_K^T`` (Q),
  its transpose (K) or the reader's ``W_V W_O`` (V) (``TransformerBridge.all_composition_scores``);
* TransformerLens itself: a ``TransformerBridge`` booted on the same weights with
  ``enable_compatibility_mode()`` (``fold_ln=True``, ``center_writing_weights=True``) and its
  ``all_composition_scores`` / ``OV``.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.composition import CompositionWeights, composition, composition_scores
from headscope.circuits.composition_svd import composition_svd, composition_svd_method
from headscope.circuits.graph import EdgeGraph, kv_name
from headscope.errors import HeadscopeError

from .conftest import assert_close
from .test_edges import _hf_head_weights, _hf_norm


class _Folded:
    """Every head's TransformerLens-folded matrices from the HF weights, by hand (row vectors)."""

    def __init__(self, raw) -> None:  # noqa: ANN001
        self.raw, d = raw, raw.d_model
        self.w = {}
        for layer in range(raw.n_layers):
            w, ln1 = _hf_head_weights(raw, layer), raw.input_norm(layer)
            n = _hf_norm(raw, ln1)  # C diag(w) (LayerNorm) or diag(w): fold_ln + center_attention_weights
            centre_out = torch.eye(d) - 1.0 / d if isinstance(ln1, torch.nn.LayerNorm) else torch.eye(d)
            post = _hf_norm(raw, raw.post_attn_norm(layer)) if raw.post_norms else torch.eye(d)
            q, k = [n @ x for x in w["q"]], [n @ x for x in w["k"]]
            if raw.type == "qwen3":
                q = [x * raw.attn(layer).q_norm.weight.detach() for x in q]
                k = [x * raw.attn(layer).k_norm.weight.detach() for x in k]
            self.w[layer] = {"q": q, "k": k, "v": [n @ x for x in w["v"]],
                             "o": [x @ centre_out for x in w["o"]], "post": post}  # center_writing_weights

    def ov(self, layer: int, h: int, writer: bool) -> torch.Tensor:
        w = self.w[layer]
        ov = w["v"][h // self.raw.group] @ w["o"][h]
        return ov @ w["post"] if writer else ov

    def qk(self, layer: int, h: int) -> torch.Tensor:
        w = self.w[layer]
        return w["q"][h] @ w["k"][h // self.raw.group].T

    def reader_maps(self, layer: int, unit: int, kind: str) -> list[torch.Tensor]:
        """q: [QK_unit]; k / v: the KV head ``unit``'s query heads' QK^T / OV (repeat-kv h // group)."""
        if kind == "q":
            return [self.qk(layer, unit)]
        members = [h for h in range(self.raw.n_heads) if h // self.raw.group == unit]
        return [self.qk(layer, h).T if kind == "k" else self.ov(layer, h, writer=False) for h in members]


def _comp(left: torch.Tensor, rights: list[torch.Tensor]) -> float:
    num = torch.stack([(left @ r).norm() ** 2 for r in rights]).sum().sqrt()
    return float(num / (left.norm() * torch.stack([r.norm() ** 2 for r in rights]).sum().sqrt()))


@pytest.mark.parametrize("fam", ["gpt2", "llama", "gemma2", "qwen3", "olmo2"])
def test_fold_matches_a_hand_folded_formula(fam, zoo_cache):
    """Every head -> later head edge: ``composition -o writer_norm=fold`` = the hand-folded
    formula (Gemma-2: (1 + w) ln1 and the writer's post-attention norm; Qwen3: q/k-norm weights;
    OLMo-2, post-norm: no ln1 before attention, so the fold changes nothing)."""
    pair = zoo_cache[fam]
    raw, model = pair.raw, pair.hs
    folded = _Folded(raw)
    if fam == "olmo2":  # QK-norm over all heads jointly: its weight, per head, is the head's slice
        dh = raw.d_head
        for layer, w in folded.w.items():
            qn, kn = raw.attn(layer).q_norm.weight.detach(), raw.attn(layer).k_norm.weight.detach()
            w["q"] = [x * qn[h * dh:(h + 1) * dh] for h, x in enumerate(w["q"])]
            w["k"] = [x * kn[g * dh:(g + 1) * dh] for g, x in enumerate(w["k"])]
    edges, got = composition_scores(model, EdgeGraph.of(model), "fold")
    want = [_comp(folded.ov(e.sender.layer, e.sender.unit, writer=True),
                  folded.reader_maps(e.receiver.layer, e.receiver.unit, e.receiver.input)) for e in edges]
    assert len(edges) > 10 and {e.receiver.input for e in edges} == {"q", "k", "v"}
    assert_close(got, torch.tensor(want), f"{fam} composition writer_norm=fold vs hand-folded HF weights", tol=1e-4)
    if fam == "olmo2":
        assert_close(got, composition_scores(model, EdgeGraph.of(model), "none")[1], "olmo2: nothing to fold", tol=0.0)


def _tl_bridge(directory):  # noqa: ANN001, ANN202
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32,
                                              local_files_only=True)
    bridge = TransformerBridge.boot_transformers(str(directory), hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(str(directory)),
                                                 device="cpu", dtype=torch.float32)
    bridge.enable_compatibility_mode(disable_warnings=True)  # fold_ln=True, center_writing_weights=True
    return bridge


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_fold_matches_transformer_lens(fam, zoo_cache):
    """= ``TransformerBridge.all_composition_scores`` on a compatibility-mode (folded) bridge of the
    same weights. TransformerLens scores every query-head pair (GQA: K/V expanded per query head,
    ``_expand_kv_heads``); headscope's k/v receiver is the KV head with its group stacked, i.e.
    ``sqrt(sum_h s_h^2 ||X_h||^2 / sum_h ||X_h||^2)`` with TransformerLens's per-head score
    ``s_h`` and norm ``||X_h||`` (``bridge.QK`` / ``bridge.OV``)."""
    pair = zoo_cache[fam]
    model, raw = pair.hs, pair.raw
    bridge = _tl_bridge(pair.directory)
    with torch.no_grad():
        tl = {k: bridge.all_composition_scores(k.upper()).scores.detach() for k in "qkv"}
        norms = {"q": bridge.QK.norm().detach(), "k": bridge.QK.norm().detach(), "v": bridge.OV.norm().detach()}
    edges, got = composition_scores(model, EdgeGraph.of(model), "fold")
    want = []
    for e in edges:
        s, r = e.sender, e.receiver
        members = [r.unit] if r.input == "q" else [h for h in range(raw.n_heads) if h // raw.group == r.unit]
        sc, nx = tl[r.input][s.layer, s.unit, r.layer, members], norms[r.input][r.layer, members]
        want.append(float(((sc * nx) ** 2).sum() / (nx**2).sum()) ** 0.5)
    assert_close(got, torch.tensor(want), f"{fam} writer_norm=fold vs TransformerLens all_composition_scores", tol=1e-5)
    # composition_svd's folded singular values = those of TransformerLens's folded OV
    w = CompositionWeights(model, "fold")
    for h in range(raw.n_heads):
        got_s = torch.tensor(composition_svd(model, f"a0.h{h}", "a1.h0", "q", weights=w).sort_values("component")["singular_value"].values)
        assert_close(got_s, bridge.OV[0, h].S.detach().float(), f"{fam} a0.h{h} singular values vs TransformerLens OV.S", tol=1e-4)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_svd_fold_components_match_a_hand_svd(fam, zoo_cache):
    """``composition_svd -o writer_norm=fold``: components = ``torch.linalg.svd`` of the hand-folded
    writer OV; score ``||v_i^T X|| / ||X||``, contribution ``sigma_i ||v_i^T X|| / (||OV|| ||X||)``."""
    pair = zoo_cache[fam]
    raw, model = pair.raw, pair.hs
    folded, dh = _Folded(raw), raw.d_head
    for writer in range(raw.n_heads):
        for kind, unit in (("q", 1), ("k", 0), ("v", raw.n_kv - 1)):
            reader = f"a2.h{unit}" if kind == "q" else kv_name(model, 2, unit)
            got = composition_svd(model, f"a0.h{writer}", reader, kind, writer_norm="fold").sort_values("component")
            ov = folded.ov(0, writer, writer=True).double()
            maps = [x.double() for x in folded.reader_maps(2, unit, kind)]
            _, s, vh = torch.linalg.svd(ov)
            s, v = s[:dh], vh[:dh]
            read = torch.stack([(v @ x).norm(dim=1) ** 2 for x in maps]).sum(0).sqrt()
            x_norm = torch.stack([x.norm() ** 2 for x in maps]).sum().sqrt()
            label = f"{fam} a0.h{writer}->{reader}<{kind}> fold"
            assert_close(torch.tensor(got["singular_value"].values), s.float(), f"{label} singular values", tol=1e-4 * float(s[0]))
            assert_close(torch.tensor(got["score"].values), (read / x_norm).float(), f"{label} component scores", tol=1e-5)
            assert_close(torch.tensor(got["contribution"].values), (s * read / (ov.norm() * x_norm)).float(), f"{label} contributions", tol=1e-5)
            assert abs(float(got["edge_score"].iloc[0]) - _comp(ov.float(), [m.float() for m in maps])) < 1e-5


def test_default_leaves_the_writer_norm_out_and_differs_from_fold(zoo_cache):
    """On zoo-llama the documented difference: the default (``none``) and ``fold`` rankings differ
    (measured Spearman 0.90, top-10 overlap 6/10); provenance records the choice; a bad value is
    one HeadscopeError line; composition_svd ranks and decomposes with the same convention."""
    model = zoo_cache["llama"].hs
    none, fold = composition(model, "weights", top_edges=10), composition(model, "weights", top_edges=10, writer_norm="fold")
    assert none.provenance["options"]["writer_norm"] == "none" and fold.provenance["options"]["writer_norm"] == "fold"
    assert "TransformerLens" in fold.provenance["choices"]["writer_norm"]
    a, b = torch.tensor(none["score"].values), torch.tensor(fold["score"].values)
    assert float((a - b).abs().max()) > 5e-3
    rho = float(torch.corrcoef(torch.stack([a.argsort().argsort().double(), b.argsort().argsort().double()]))[0, 1])
    assert 0.8 < rho < 0.97, rho
    top = lambda t: set(t[t["circuit"]].index)  # noqa: E731
    assert len(top(none) & top(fold)) < 10
    svd = composition_svd_method(model, "weights", top_edges=3, rank=1, writer_norm="fold")
    assert list(svd["edge_score"].values) == pytest.approx(sorted(b.tolist(), reverse=True)[:3], abs=1e-5)
    for bad in (lambda: composition(model, "weights", writer_norm="folded"),
                lambda: composition_svd_method(model, "weights", writer_norm="ln1")):
        with pytest.raises(HeadscopeError, match="writer_norm must be none") as err:
            bad()
        assert "\n" not in str(err.value)
