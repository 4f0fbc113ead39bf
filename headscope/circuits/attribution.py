"""Edge attribution patching: EAP (Syed, Rager & Conmy 2023) and EAP-IG (Hanna, Pezzelle & Belinkov
2024, "Have faith in faithfulness").

EAP estimates the exact noising edge effect of :mod:`headscope.circuits.exact` to first order:

``score(s -> r) = sum_{prompt, pos, d} (corrupted - clean output of s) * dM/d(input of r) |clean``

where ``M`` is the prompt-mean metric and the gradient is taken at the receiver's *own* input,
on the clean run: for a q/k/v input that is the residual as seen by that head's (KV head's)
projection alone, ``J^T g`` with ``g = dM/dq_h`` (``hook_q``, per head) and ``J`` the Jacobian of
``x -> q_h(ln1(x))``; for an MLP its input residual (before ``ln2``); for the logits the final
residual. All edges come from one corrupted forward (the sender differences, :func:`prepare`),
one clean forward + backward, and one single-block forward + backward per layer that carries
the per-head q/k/v gradients back through ``ln1`` to the residual (batched over heads).
Under GQA a k/v input belongs to a KV head: its gradient sums over the query heads of the group
(they share the key), so the edge is the KV head's, never split among query heads.

EAP-IG replaces the clean gradient by its average over ``steps`` points on a straight path
between the runs: ``point_k = corrupted + (k / steps) (clean - corrupted)``, ``k = 1..steps``
(the clean end included, the corrupted end not; ``grid="corrupted_end"``: ``k = 0..steps-1``).
The reference ungroups GQA (``ungroup_grouped_query_attention``); headscope does not.
Reference code: ``hannamw/EAP-IG``, ``src/eap/attribute.py`` @795f560 (the same logic at
@62f83cd, 15 lines lower). Three interpolations:

``interpolation="input"`` (the paper's EAP-IG, ``get_scores_eap_ig`` L102-183): the embeddings
are interpolated (L149-154, there ``k = 0..steps-1``: ``grid="corrupted_end"``), everything
downstream is recomputed, gradient paths kept; ``steps=1`` is EAP.

``interpolation="activations"`` (``get_scores_ig_activations`` L185-255; the paper's EAP-IG
defines only input interpolation, this variant is the code's ``EAP-IG-activations``):

* node groups, **one at a time**, in the order ``input, a0, m0, a1, m1, ...`` (``nodeslist``
  L233-236): the embedding (TransformerLens ``hook_embed``), every head of one layer at once
  (``hook_result``: each head's ``z_h W_O^h``, forward index ``attn_slice=True``, graph.py
  L287/L291) and one MLP (``hook_mlp_out``);
* for each group and ``alpha = k / steps``, ``k = 1..steps`` (L239; the clean end included), a
  clean run in which that group's output is **replaced by the constant** ``alpha clean + (1 -
  alpha) corrupted`` (``output_interpolation_hook`` L224-229: the cached activations are
  detached, ``utils.py`` L71, so no gradient flows through the held group, also at
  ``alpha = 1``); every other node is **recomputed** from it (not held);
* every run's gradient at **every** receiver input (``hook_q/k/v_input`` per head,
  ``hook_mlp_in``, the final ``hook_resid_post``; ``make_hooks_and_matrices``'s backward hooks,
  ``utils.py`` L87-136) is accumulated against the same ``corrupted - clean`` sender
  differences, and the sum is divided by the number of runs ``(2 n_layers + 1) steps`` (L240,
  L253). A held group's own inputs (its heads' q/k/v, its MLP's input) get gradient 0 in its runs.

headscope holds a layer's heads at ``hook_z`` (``z = alpha z_clean + (1 - alpha) z_corrupted``
for every head; ``z W_O`` is linear, so this is each head's ``z_h W_O^h`` interpolated) and an
MLP at ``hook_mlp_out`` (what it adds to the residual; TransformerLens' ``hook_mlp_out`` is also
after Gemma's post-MLP norm). Without post-attention norms, holding z equals holding the
attention sublayer output. With them (Gemma-2/3, OLMo-2) the reference's ``hook_result`` sits
before ``ln1_post``, which is recomputed from the interpolated heads: ``norm(interp(pre-norm
sum))`` is not ``interp(norm(clean), norm(corrupted))``, which is what interpolating the
sublayer output (headscope before this change) gave. Consequences of the reference's procedure,
kept: ``steps=1`` is **not** EAP (every run cuts one group's path), and the scores are an
average over groups, not a path integral of each edge: they do not converge to the edge's
effect as ``steps`` grows (tests/conformance/test_eap_ig_activations.py gives the limit on a
linear toy). One difference, not kept: in the reference's runs that hold the embedding,
TransformerLens' backward hooks on layer 0's ``hook_q/k/v_input`` do not fire on rotary models
(nothing upstream of them needs a gradient), so edges input -> layer-0 q/k/v miss those
``steps`` runs' gradients there; headscope includes them (the embedding is a leaf).

``interpolation="joint"`` (Marks et al. 2024's style, headscope's former ``activations``):
every group at once (embedding, every head's z, every MLP output) at each point, the gradient
paths through the components kept (the value replaced, ``x + (target - x).detach()``); a path
integral: converges to the edge effect where the edge carries the whole effect.

Cost: ``input`` and ``joint``: ``steps`` clean forward+backward passes (plus the per-layer
q/k/v pull-back); ``activations``: ``(2 n_layers + 1) steps`` of them.

Metrics: ``logit_diff`` (the task's metric at END) or ``kl`` (``-KL(clean || run)`` of the END
next-token distribution, zero on the clean run: its gradient there vanishes, which is why
EAP-IG is recommended with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns, _stop
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.sender_delta import sender_deltas
from headscope.errors import HeadscopeError
from headscope.patching.engine import PatchEngine, hook_alias

INTERPOLATIONS = ("input", "activations", "joint")
GRIDS = ("clean_end", "corrupted_end")
POSITIONS = ("sum", "each")
RECEIVER_CHUNK = 64
"""Receivers per batched matmul of ``positions=each`` (bounds its temporaries)."""


def check_positions(positions: str) -> None:
    """One-line error unless ``positions`` is ``sum`` or ``each``."""
    if positions not in POSITIONS:
        raise HeadscopeError(f"positions must be one of {', '.join(POSITIONS)} (each: one row per edge and token position); got '{positions}'.")


def kl_metric(clean_end_logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-row ``-KL(p_clean || p_run)`` at END, for rows stacked as slices of the n prompts.

    Args:
        clean_end_logits: (n, d_vocab) the clean run's END logits.
    """
    ref = torch.log_softmax(clean_end_logits.detach().float(), -1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), -1)
        r = ref.to(logp.device).repeat(logits.shape[0] // ref.shape[0], 1)
        return -(r.exp() * (r - logp)).sum(-1)

    return metric


def _passthrough(store: dict[str, torch.Tensor], key: str):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        store[key] = x.view_as(x)  # a fresh view: the gradient reaches exactly this tensor
        return store[key]

    return fn


def _set_value(target: torch.Tensor):  # noqa: ANN202
    """Hook: the activation takes ``target``'s value, its gradient path is kept."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x + (target.to(x.device, x.dtype) - x).detach()

    return fn


def _leaf(value: torch.Tensor):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.to(x.device, x.dtype).detach().requires_grad_(True)

    return fn


def activation_nodes(n_layers: int) -> list[str]:
    """The node groups the ``activations`` mode interpolates one at a time, in the reference's order.

    ``input``, then per layer ``a{l}`` (every head of the layer) and ``m{l}``: the reference's
    ``nodeslist`` (``hannamw/EAP-IG`` ``src/eap/attribute.py`` L233-236).
    """
    return ["input"] + [f"{kind}{layer}" for layer in range(n_layers) for kind in "am"]


def _constant(value: torch.Tensor):  # noqa: ANN202
    """Hook: the activation becomes the constant ``value`` (no gradient path through it)."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.to(x.device, x.dtype).detach().clone()

    return fn


def _interpolation_hooks(runs: EdgeRuns, n_layers: int, t: float, interpolation: str,
                         node: str | None) -> list[tuple[str, Callable]]:
    """Forward hooks of one run on the path, ``clean + t (corrupted - clean)`` (see the module docstring)."""
    c, x = runs.clean, runs.corrupted

    def point(act: str, layer: int) -> torch.Tensor:
        return c.acts[(act, layer)] + t * (x.acts[(act, layer)] - c.acts[(act, layer)])

    t_emb = t if interpolation in ("input", "joint") or node == "input" else 0.0
    emb = c.resid_pre[0] + t_emb * (x.resid_pre[0] - c.resid_pre[0])
    hooks: list[tuple[str, Callable]] = [(hook_alias("resid_pre", 0), _leaf(emb))]
    if interpolation == "joint" and t != 0.0:
        for layer in range(n_layers):
            for act in ("z", "mlp_out"):
                hooks.append((hook_alias(act, layer), _set_value(point(act, layer))))
    if interpolation == "activations" and node not in (None, "input"):
        # one node group held at its point as a constant, also at t = 0 (the clean end): the
        # reference's output_interpolation_hook (L224-229) returns a tensor without a gradient path
        act, layer = ("z" if node[0] == "a" else "mlp_out"), int(node[1:])
        hooks.append((hook_alias(act, layer), _constant(point(act, layer))))
    return hooks


def receiver_grads(
    engine: PatchEngine,
    runs: EdgeRuns,
    graph: EdgeGraph,
    t: float,
    interpolation: str = "input",
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    node: str | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of the prompt-mean metric at every receiver input, at ``clean + t (corrupted - clean)``.

    Args:
        t: 0 is the clean run, 1 the corrupted one.
        interpolation: ``input``, ``joint`` or ``activations`` (then ``node``, one of
            :func:`activation_nodes`, is the node group interpolated, everything else clean).

    Returns:
        receiver key (``name<input>``) -> (n, pos, d_model) gradient at that input's residual.
    """
    model = engine.model
    metric = metric or engine.metric
    layers = range(model.n_layers)
    hooks = _interpolation_hooks(runs, model.n_layers, t, interpolation, node)
    kept: dict[str, torch.Tensor] = {}
    resid: dict[str, torch.Tensor] = {}
    for layer in layers:
        hooks += [(hook_alias(a, layer), _passthrough(kept, f"{a}{layer}")) for a in "qkv"]
        hooks.append((hook_alias(runs.mlp_act, layer), _passthrough(kept, f"mlp{layer}")))
        hooks.append((hook_alias("resid_pre", layer), _keep_detached(resid, f"resid{layer}")))
    hooks.append((hook_alias("resid_post", model.n_layers - 1), _passthrough(kept, "final")))
    with torch.enable_grad():
        logits = engine._run(runs.clean_tokens.to(model.device), 0, hooks, k=1, from_tokens=True)
        value = metric(logits).mean()
        names = list(kept)
        # a held node group's own inputs do not reach the metric: their gradient is 0 (the
        # reference's backward hooks do not fire there and add nothing)
        got = torch.autograd.grad(value, [kept[k] for k in names], allow_unused=True)
        grads = {k: torch.zeros_like(kept[k]) if g is None else g for k, g in zip(names, got, strict=True)}
    out: dict[str, torch.Tensor] = {"logits<in>": grads["final"].detach()}
    for layer in layers:
        out[f"m{layer}<in>"] = grads[f"mlp{layer}"].detach()
        per_unit = _head_input_grads(engine, layer, resid[f"resid{layer}"], {a: grads[f"{a}{layer}"] for a in "qkv"})
        for r in graph.receivers:
            if r.kind == "head" and r.layer == layer:
                out[r.key] = per_unit[(r.input, r.unit)]
    return out


def _keep_detached(store: dict[str, torch.Tensor], key: str):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> None:
        store[key] = x.detach().clone()

    return fn


def _head_input_grads(engine: PatchEngine, layer: int, resid: torch.Tensor,
                      grads: dict[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
    """``J^T g`` for every q head and k/v KV head of ``layer``: (act, unit) -> (n, pos, d_model).

    One single-block forward of ``len(units)`` slices of ``resid`` (n, pos, d_model); slice i's
    loss is ``<g_unit, act_unit>`` of its own unit only, so its input gradient is that unit's.
    """
    model = engine.model
    units = [(a, u) for a in "qkv" for u in range(grads[a].shape[2])]
    k, n = len(units), resid.shape[0]
    with torch.enable_grad():
        inp = resid.detach().repeat(k, 1, 1).requires_grad_(True)
        kept: dict[str, torch.Tensor] = {}
        hooks = [(hook_alias(a, layer), _passthrough(kept, a)) for a in "qkv"]
        engine._run(inp, layer, hooks, k=k, stop_at_layer=_stop(model, layer))
        loss = inp.new_zeros(())
        for i, (a, u) in enumerate(units):
            act = kept[a].view(k, n, *kept[a].shape[1:])[i, :, :, u]
            loss = loss + (act * grads[a][:, :, u].to(act.dtype)).sum()
        (g,) = torch.autograd.grad(loss, [inp])
    g = g.view(k, n, *g.shape[1:]).detach()
    return {unit: g[i] for i, unit in enumerate(units)}


def edge_attribution(
    engine: PatchEngine,
    runs: EdgeRuns,
    graph: EdgeGraph,
    steps: int = 1,
    interpolation: str = "input",
    metric: str = "logit_diff",
    grid: str = "clean_end",
    positions: str = "sum",
    sender_delta: str = "post_norm",
) -> torch.Tensor:
    """EAP (``steps=1``) or EAP-IG scores of every edge of ``graph``.

    ``interpolation``: ``input`` (embeddings), ``activations`` (the reference's
    ``EAP-IG-activations``: one node group held at a time, ``(2 n_layers + 1) steps`` runs) or
    ``joint`` (every sender output at once, gradient paths kept); see the module docstring.

    ``grid``: ``clean_end`` (k = 1..steps; the reference's activations grid) or
    ``corrupted_end`` (k = 0..steps-1, the reference's input-interpolation grid).

    ``positions``: ``sum`` (the edge's score summed over positions) or ``each`` (one score per
    token position ``p`` of the right-padded prompts: the estimate of patching the sender's
    delta into the receiver input at position ``p`` only, ``sum_{prompt, d} delta_s[., p, .] *
    grad_r[., p, .]``; the ``each`` scores sum over ``p`` to the ``sum`` score). Position ``p``
    is the p-th token of every prompt; padding sits after a prompt's END, where a causal model's
    metric cannot read it, so its gradient (and score) there is exactly 0.

    ``sender_delta``: the head differences the gradients multiply, ``post_norm`` (``runs.deltas``,
    after the post-attention norm on Gemma-2/3 and OLMo-2) or ``pre_norm`` (the reference's
    per-head ``hook_result`` difference, before it); see :mod:`headscope.circuits.sender_delta`.

    Returns:
        (len(graph.edges),) or, for ``positions="each"``, (len(graph.edges), pos): estimated
        ``M(edge patched) - M(clean)`` of the prompt-mean metric.
    """
    if steps < 1:
        raise HeadscopeError(f"steps must be at least 1 (EAP-IG uses 5 by default); got {steps}.")
    if interpolation not in INTERPOLATIONS:
        raise HeadscopeError(f"interpolation must be one of {', '.join(INTERPOLATIONS)} (activations: hannamw/EAP-IG's one-group-at-a-time variant); got '{interpolation}'.")
    if grid not in GRIDS:
        raise HeadscopeError(f"grid must be one of {', '.join(GRIDS)}; got '{grid}'.")
    check_positions(positions)
    deltas = sender_deltas(engine.model, runs, sender_delta)
    fn = metric_fn(engine, runs, metric)
    total: dict[str, torch.Tensor] = {}
    nodes: list[str | None] = activation_nodes(engine.model.n_layers) if interpolation == "activations" else [None]
    for node in nodes:
        for k in (range(1, steps + 1) if grid == "clean_end" else range(steps)):
            t = 1.0 - k / steps  # corrupted + (k/steps)(clean - corrupted) = clean + t (corrupted - clean)
            for key, g in receiver_grads(engine, runs, graph, t, interpolation, fn, node).items():
                total[key] = total[key] + g if key in total else g.clone()
    steps = steps * len(nodes)  # the reference divides by every run (L240, L253)
    s_index = {s.name: i for i, s in enumerate(graph.senders)}
    rows = torch.tensor([s_index[e.sender.name] for e in graph.edges])
    if positions == "sum":
        r_index = {r.key: i for i, r in enumerate(graph.receivers)}
        stacked = torch.stack([deltas[s.name] for s in graph.senders]).flatten(1).float()  # (S, n*pos*d)
        grads = torch.stack([total[r.key] / steps for r in graph.receivers]).flatten(1).float()  # (R, n*pos*d)
        table = stacked @ grads.T  # (S, R)
        cols = torch.tensor([r_index[e.receiver.key] for e in graph.edges])
        return table[rows, cols].cpu()
    return _per_position(deltas, graph, total, steps, rows, RECEIVER_CHUNK)


def _per_position(by_sender: dict[str, torch.Tensor], graph: EdgeGraph, total: dict[str, torch.Tensor], steps: int,
                  rows: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(E, pos) scores: ``sum_{prompt, d} delta_s[., p, .] * grad_r[., p, .]`` for every edge.

    Accumulated over receivers in chunks of ``chunk``: one batched matmul per chunk, (pos, S,
    n*d) @ (pos, n*d, chunk) -> (pos, S, chunk), written into the output and dropped. The
    largest temporaries are one chunk's stacked gradients and its (pos, S, chunk) table, never
    (edges, n, pos, d).
    """
    deltas = torch.stack([by_sender[s.name] for s in graph.senders]).float()  # (S, n, pos, d)
    n_senders, n, n_pos, d = deltas.shape
    by_pos = deltas.permute(2, 0, 1, 3).reshape(n_pos, n_senders, n * d)  # (pos, S, n*d)
    del deltas
    out = torch.empty(len(graph.edges), n_pos)
    by_receiver: dict[str, list[int]] = {}
    for i, e in enumerate(graph.edges):
        by_receiver.setdefault(e.receiver.key, []).append(i)
    keys = list(by_receiver)
    for at in range(0, len(keys), chunk):
        part = keys[at: at + chunk]
        g = torch.stack([total[k] for k in part]).float().to(by_pos.device) / steps  # (R, n, pos, d)
        g = g.permute(2, 1, 3, 0).reshape(n_pos, n * d, len(part))  # (pos, n*d, R)
        table = torch.bmm(by_pos, g).cpu()  # (pos, S, R)
        for c, key in enumerate(part):
            idx = by_receiver[key]
            out[idx] = table[:, rows[idx], c].T
    return out


def metric_fn(engine: PatchEngine, runs: EdgeRuns, metric: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-row metric: the engine's (``logit_diff``) or ``kl`` against the clean run."""
    if metric == "logit_diff":
        return engine.metric
    if metric == "kl":
        return kl_metric(runs.clean.end_logits)
    raise HeadscopeError(f"metric must be logit_diff or kl; got '{metric}'.")
