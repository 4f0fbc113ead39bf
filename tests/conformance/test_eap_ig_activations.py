"""EAP-IG with activation interpolation against a hand copy of the reference's procedure in raw HF.

The reference (``hannamw/EAP-IG``, ``src/eap/attribute.py``, ``get_scores_ig_activations``,
L185-255) runs the clean prompt once per node group (the embedding; all heads of a layer, at
TransformerLens' per-head ``hook_result``; an MLP at ``hook_mlp_out``) and per ``alpha = k/steps``,
k = 1..steps, with that group's output replaced by the constant ``alpha clean + (1 - alpha)
corrupted`` and everything else recomputed; every run's gradient at every receiver input
(``hook_q/k/v_input``, ``hook_mlp_in``, the final residual) is accumulated against
``corrupted - clean`` of each sender and divided by the number of runs.

Here that procedure is written with plain HF module hooks and autograd (no headscope): the
gradients come from :func:`raw_eap.raw_receiver_grads` (a zero-valued leaf at each receiver's
read of the residual). A head group is held at its interpolated input of the output projection
(``o_proj``), so on Gemma-2 the post-attention norm is recomputed from it, as TransformerLens'
``ln1_post`` after ``hook_result``.

The sender differences the gradients multiply come in two versions. ``deltas="reference"``:
the reference's own, :func:`raw_eap.reference_deltas` (per head ``(z_corr - z_clean)_h W_O^h`` from
``o_proj``'s input and weight, before the post-attention norm); headscope matches it with
``sender_delta=pre_norm``. ``deltas="headscope"``: :func:`raw_edges.sender_deltas`, the change of
the sublayer's residual write with one head corrupted (after the post-norm): headscope's default
``post_norm`` convention, *not* the reference's on Gemma-2 and OLMo-2 (identical on Llama).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import headscope as hs
from headscope.circuits.attribution import edge_attribution
from headscope.circuits.exact import prepare
from headscope.circuits.graph import EdgeGraph
from headscope.patching import PatchEngine
from headscope.toy.zoo import build_zoo_hf

from .conftest import assert_close
from .raw_eap import add_eps, raw_receiver_grads, reference_deltas
from .raw_edges import _replace_input, sender_deltas
from .raw_hf import RawHF, logit_diff


def reference_ig_activations(raw: RawHF, batch: Any, edges: list[Any], steps: int, joint: bool = False,
                              deltas: str = "reference") -> torch.Tensor:
    """(len(edges),) the reference's EAP-IG-activations scores, by raw HF hooks.

    ``joint``: instead, every group at each alpha at once, the value replaced but the gradient
    path through the group kept (``x + (target - x).detach()``), averaged over the ``steps`` runs.
    ``deltas``: ``reference`` (the reference's per-head ``hook_result`` differences) or
    ``headscope`` (headscope's post-norm sender differences, its default convention).
    """
    clean, corr = raw.run(batch.clean), raw.run(batch.corrupted)
    if deltas == "reference":
        diffs = reference_deltas(raw, batch.clean, batch.corrupted)
    else:
        diffs = sender_deltas(raw, batch.clean, batch.corrupted)
    receivers = list({e.receiver.key: e.receiver for e in edges}.values())
    alphas = [k / steps for k in range(1, steps + 1)]

    def held(value: torch.Tensor):  # noqa: ANN202
        def fn(x: torch.Tensor) -> torch.Tensor:
            return x + (value - x).detach() if joint else value.detach().clone()

        return fn

    def group(node: str, a: float) -> list[Any]:
        if node == "input":
            value = a * clean.emb + (1 - a) * corr.emb
            return [raw.layers[0].register_forward_pre_hook(_replace_input(held(value)), with_kwargs=True)]
        layer = int(node[1:])
        if node[0] == "a":  # every head's o_proj input: the post-attention norm is recomputed
            z = held((a * clean.z[layer] + (1 - a) * corr.z[layer]).flatten(2))
            return [raw.out_proj(layer).register_forward_pre_hook(lambda m, args, z=z: (z(args[0]), *args[1:]))]
        value = held(a * clean.mlp_add[layer] + (1 - a) * corr.mlp_add[layer])
        module = raw.post_mlp_norm(layer) if raw.post_norms else raw.mlp(layer)
        return [module.register_forward_hook(lambda m, i, o, v=value: v(o))]

    nodes = ["input"] + [f"{kind}{layer}" for layer in range(raw.n_layers) for kind in "am"]
    runs = [[(n, a)] for n in nodes for a in alphas] if not joint else [[(n, a) for n in nodes] for a in alphas]
    total = {r.key: torch.zeros(*batch.clean.shape, raw.d_model) for r in receivers}
    for run in runs:
        register = lambda run=run: [h for n, a in run for h in group(n, a)]  # noqa: E731
        for key, g in raw_receiver_grads(raw, batch, receivers, register).items():
            total[key] += g
    return torch.stack([(diffs[e.sender.name] * total[e.receiver.key]).sum() / len(runs) for e in edges])


def _some_edges(graph: EdgeGraph) -> list[Any]:
    """The first and last incoming edge of every third receiver (q, k, v of query / KV heads, MLPs,
    logits), and its first and last incoming edge out of a head (the first and last incoming
    edges are out of the embedding and an MLP: alone they would never test a head's difference)."""
    into: dict[str, list[Any]] = {}
    for e in graph.edges:
        into.setdefault(e.receiver.key, []).append(e)
    keys = [r.key for r in graph.receivers][::3] + ["logits<in>"]
    out = []
    for k in dict.fromkeys(keys):
        heads = [e for e in into[k] if e.sender.kind == "head"]
        out += [into[k][0], into[k][-1], *heads[:1], *heads[-1:]]
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("fam", ["llama", "gemma2", "olmo2"])
def test_ig_activations_match_the_reference_procedure(fam, zoo_cache, prompts):
    """headscope's ``interpolation=activations`` with ``sender_delta=pre_norm`` equals the
    reference procedure done by hand on raw HF with the reference's own sender differences
    (per-head ``hook_result``, before the post-attention norm), per head on the post-norm
    families (Gemma-2, OLMo-2) where interpolating the sublayer output instead would differ;
    ``joint`` equals every group held at once with the gradient paths kept. The default
    ``post_norm`` equals the same procedure with headscope's post-norm differences instead."""
    pair, batch = zoo_cache[fam], prompts.batch
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    edges = _some_edges(graph)
    idx = [graph.edges.index(e) for e in edges]
    for mode in ("activations", "joint"):
        for sender_delta, diffs in (("pre_norm", "reference"), ("post_norm", "headscope")):
            got = edge_attribution(engine, runs, graph, steps=3, interpolation=mode, sender_delta=sender_delta)[idx]
            want = reference_ig_activations(pair.raw, batch, edges, steps=3, joint=mode == "joint", deltas=diffs)
            assert want.abs().max() > 1e-2, "the reference scores should not vanish"
            assert_close(got, want, f"{fam} EAP-IG {mode}, {sender_delta} vs raw procedure with {diffs} deltas per edge",
                         tol=1e-4 + 1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("interpolation", ["input", "joint", "activations"])
def test_eap_ig_converges_on_a_linear_toy(interpolation, prompts, tmp_path):
    """Zoo Llama with every attention output projection and MLP down projection zeroed: heads and
    MLPs write nothing, so the final residual is the embedding and moves linearly along the
    interpolation path, while the metric (final RMSNorm, unembedding) is not linear in it. The
    edge input -> logits then carries the whole effect ``exact = M(corrupted) - M(clean)`` (plain
    raw HF runs); the path integrals of ``input`` and ``joint`` must converge to it (error
    O(1/steps)), EAP (1 step) is off. The reference's ``activations`` mode averages over the
    ``2L + 1`` node groups, and only the embedding group moves the residual here: the other
    ``2L`` groups' runs are clean, so it converges to ``(exact + 2L eap) / (2L + 1)``, with ``eap``
    the raw clean gradient at the final norm's input times the embedding difference."""
    model, tokenizer = build_zoo_hf("llama", seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    batch = prompts.batch
    raw = RawHF(tmp_path)
    metric = lambda toks: logit_diff(raw.run(toks).logits, batch.end, batch.answer, batch.wrong).mean()  # noqa: E731
    exact = float(metric(batch.corrupted) - metric(batch.clean))
    want = exact
    if interpolation == "activations":
        delta = raw.run(batch.corrupted).emb - raw.run(batch.clean).emb
        eps = torch.zeros_like(delta, requires_grad=True)
        handle = raw.final_norm.register_forward_pre_hook(add_eps(eps), with_kwargs=True)
        try:
            with torch.enable_grad():
                value = logit_diff(raw.model(input_ids=batch.clean, use_cache=False).logits,
                                   batch.end, batch.answer, batch.wrong).mean()
                (g,) = torch.autograd.grad(value, [eps])
        finally:
            handle.remove()
        groups = 2 * raw.n_layers + 1
        want = (exact + (groups - 1) * float((g * delta).sum())) / groups
    hs_model = hs.load_model(str(tmp_path))
    engine = PatchEngine(hs_model, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(hs_model)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    i = graph.edges.index(graph.edge("input", "logits", "in"))
    errors = {s: abs(float(edge_attribution(engine, runs, graph, steps=s, interpolation=interpolation)[i]) - want)
              for s in (1, 4, 16)}
    assert errors[1] > 0.05 * abs(want), f"EAP should be off on this toy: {errors}"
    assert errors[16] < errors[4] < errors[1] and errors[16] < 0.02 * abs(want), f"no convergence to {want:.4f}: {errors}"
