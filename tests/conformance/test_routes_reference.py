"""``routes -o aggregate=reference`` against a hand copy of EAP-IG's information-flow-route scores
(``hannamw/EAP-IG`` @795f560, ``src/eap/attribute.py``, ``get_scores_information_flow_routes``
L310-415), written here on raw Hugging Face module hooks (no headscope tracer or engine). Models: toy-induction (GPT-2, planted induction), the zoo's llama
(GQA), gpt2 (learned positions), gpt_neox (parallel residual) and gemma2 (post-norms: heads are
taken before the post-attention norm, as TransformerLens' ``hook_result``).

The copy follows the reference's layout: an ``output_activations`` tensor (batch, pos, n_forward,
d_model) in EAP-IG's forward order (``input``, then per layer its heads and its MLP; graph.py
``_forward_index`` L264-289), filled from the token embedding (``hook_embed``: the input
embedding module's output), each head's ``z_h W_O^h`` (``hook_result``: the output projection
applied head by head without its bias) and each MLP's output; each receiver input (q/k/v:
the residual entering the layer, repeated per head; MLP: the residual entering the pre-MLP norm;
logits: the final norm's input) scores every node before its ``prev_index`` (graph.py L233-254)
with ``torch.linalg.vector_norm(..., ord=1)`` proximity, normalised over the forward axis, padding
masked from the attention mask, mean over positions, mean over prompts.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.graph import EdgeGraph
from headscope.circuits.routes import routes
from headscope.errors import HeadscopeError
from headscope.toy.vocab import PAD, VOCAB

from .conftest import assert_close
from .raw_edges import FixedTask, layer_inputs
from .test_circuit_eval import toy_raw  # noqa: F401 - the toy-induction fixture


def _capture_inputs(module: torch.nn.Module, got: dict, key: str):  # noqa: ANN202
    def fn(m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        got[key] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    return module.register_forward_pre_hook(fn, with_kwargs=True)


def _eap_ig_route_scores(raw, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
    """The reference's ``scores`` (n_forward, n_backward) and its index maps, by hand."""
    L, H = raw.n_layers, raw.n_heads
    got: dict = {}
    handles = [raw.model.get_input_embeddings().register_forward_hook(lambda m, i, o: got.__setitem__("embed", o.detach().clone()))]
    for layer in range(L):
        handles.append(_capture_inputs(raw.pre_mlp_norm(layer), got, f"mlp_in{layer}"))
    try:
        run = raw.run(tokens)
    finally:
        for h in handles:
            h.remove()
    resid_pre = layer_inputs(raw, tokens)
    b, n_pos = tokens.shape
    n_forward = 1 + L * (H + 1)
    n_backward = L * (3 * H + 1) + 1
    fwd = {"input": 0}
    bwd = {"logits": n_backward - 1}
    out = torch.zeros(b, n_pos, n_forward, raw.d_model)
    out[:, :, 0] = got["embed"]
    for layer in range(L):
        i = 1 + layer * (H + 1)
        out[:, :, i:i + H] = raw.head_out(layer, run.z[layer])
        out[:, :, i + H] = run.mlp_add[layer]
        fwd.update({f"a{layer}.h{h}": i + h for h in range(H)}, **{f"m{layer}": i + H})
        j = layer * (3 * H + 1)
        bwd.update({(f"a{layer}.h{h}", a): j + "qkv".index(a) * H + h for a in "qkv" for h in range(H)},
                   **{f"m{layer}": j + 3 * H})
    scores = torch.zeros(n_forward, n_backward)
    mask = (torch.arange(n_pos).expand(b, n_pos) < lengths.unsqueeze(1)).float()[..., None, None]

    def score_into(acts: torch.Tensor, prev: int, cols: slice | int) -> None:  # acts (b, pos, units, d)
        acts = acts.unsqueeze(2)  # b pos 1 backward d
        outs = out.unsqueeze(3)[:, :, :prev]  # b pos forward 1 d
        prox = torch.clamp(-torch.linalg.vector_norm(outs - acts, ord=1, dim=-1) + torch.linalg.vector_norm(acts, ord=1, dim=-1),
                           min=0)
        imp = prox / prox.sum(2, keepdim=True)  # b pos forward backward
        imp = (imp * mask).sum(1) / lengths.view(-1, 1, 1)
        scores[:prev, cols] += imp.sum(0).squeeze(-1)

    for layer in range(L):
        prev = 1 + layer * (H + 1)
        x = resid_pre[layer].unsqueeze(2).expand(b, n_pos, H, raw.d_model)  # hook_{q,k,v}_input: repeated per head
        for a in "qkv":
            start = bwd[(f"a{layer}.h0", a)]
            score_into(x, prev, slice(start, start + H))
        parallel = raw.type == "gpt_neox"  # prev_index L244-246: a parallel MLP does not read its layer's heads
        score_into(got[f"mlp_in{layer}"].unsqueeze(2), prev if parallel else prev + H, bwd[f"m{layer}"])
    score_into(run.resid_final.unsqueeze(2), n_forward, bwd["logits"])
    return scores / b, {"fwd": fwd, "bwd": bwd}


def _reference_per_edge(graph: EdgeGraph, scores: torch.Tensor, index: dict) -> torch.Tensor:
    """headscope's edges read from the reference matrix; a KV head's k/v edge: mean over its group."""
    fwd, bwd = index["fwd"], index["bwd"]
    want = []
    for e in graph.edges:
        r = e.receiver
        if r.kind == "head":
            heads = r.kv_group if r.input in "kv" else (r.unit,)
            want.append(sum(float(scores[fwd[e.sender.name], bwd[(f"a{r.layer}.h{h}", r.input)]]) for h in heads) / len(heads))
        else:
            want.append(float(scores[fwd[e.sender.name], bwd[r.name]]))
    return torch.tensor(want)


def _cases(request, zoo_cache, prompts):  # noqa: ANN001, ANN202
    if request.param == "toy-induction":
        raw, model, _, batch = request.getfixturevalue("toy_raw")
        assert bool((batch.end == batch.clean.shape[1] - 1).all()), "toy-induction prompts are unpadded"
        return raw, model, batch, torch.full((batch.clean.shape[0],), batch.clean.shape[1])
    pair = zoo_cache[request.param]
    batch = prompts.batch
    return pair.raw, pair.hs, batch, (batch.clean != VOCAB[PAD]).sum(1)  # the reference's attention-mask lengths


@pytest.fixture(params=["toy-induction", "llama", "gpt2", "gpt_neox", "gemma2"])
def case(request, zoo_cache, prompts):  # noqa: ANN001, ANN201
    return request.param, *_cases(request, zoo_cache, prompts)


def test_reference_aggregate_equals_eap_ig_by_hand(case):
    """Every edge of headscope's graph (q, k, v per head / KV head, MLP, logits inputs) has the hand
    copy's score; q, k and v edges from one sender into one layer are equal (one residual)."""
    name, raw, model, batch, lengths = case
    got = routes(model, FixedTask(batch), aggregate="reference")
    graph = EdgeGraph.of(model)
    scores, index = _eap_ig_route_scores(raw, batch.clean, lengths)
    assert not scores.isnan().any(), "the hand copy divides 0 by 0 nowhere on these prompts"
    want = _reference_per_edge(graph, scores, index)
    assert_close(torch.tensor(got["score"].to_numpy()), want, f"{name}: routes aggregate=reference vs EAP-IG by hand", tol=1e-6)
    assert got.provenance["choices"]["zero_sum_positions"] == 0
    assert list(got["circuit"]) == (want > 0.04).tolist()
    heads = got[got["receiver"].str.startswith("a")]
    spread = heads.groupby(["sender", "receiver_layer"])["score"].agg(lambda v: float(v.max() - v.min()))
    assert float(spread.max()) < 1e-6, "q, k and v inputs of one layer read one residual: equal scores"

def test_trace_default_differs_from_reference(case):
    """The documented difference: the default traces from END, takes the maximum over positions and
    gives q/k edges 0; the reference scores q/k like v (a positive share somewhere) and averages."""
    name, raw, model, batch, lengths = case
    trace = routes(model, FixedTask(batch))
    ref = routes(model, FixedTask(batch), aggregate="reference")
    qk = trace["receiver_input"].isin(["q", "k"]).to_numpy()
    assert (trace["score"].to_numpy()[qk] == 0).all(), f"{name}: trace gives q/k edges 0"
    assert (ref["score"].to_numpy()[qk] > 0).any(), f"{name}: the reference scores q/k edges"
    assert (trace["score"] - ref["score"]).abs().max() > 1e-3
    assert trace.provenance["options"] == {"threshold": 0.04, "aggregate": "trace"}
    assert ref.provenance["options"] == {"threshold": 0.04, "aggregate": "reference"}


def test_aggregate_refuses_bad_values():
    with pytest.raises(HeadscopeError, match="aggregate must be trace or reference"):
        routes(None, None, aggregate="max")
    with pytest.raises(HeadscopeError, match="use level=component"):
        routes(None, None, level="token", aggregate="reference")
