"""Exact edge patching on the :class:`~headscope.patching.engine.PatchEngine` (noising direction).

For an edge ``s -> r<input>`` the clean run is repeated with one change: the residual that the
receiver input reads becomes ``clean residual + (corrupted - clean output of s)``, and only
that input sees it (Wang et al. 2022, App. B; Conmy et al. 2023, Sec. 2 "edge patching").
Every other component, including the other inputs of the same head and the other heads of
the layer, reads the clean residual. The effect is ``metric(patched) - metric(clean)``, per
prompt; the score is its prompt mean.

How it is computed exactly (no linearisation):

1. ``prepare``: one clean and one corrupted cached run, and each sender's output difference
   ``delta_s`` (n, pos, d_model): the embedding difference for ``input``, the MLP sublayer
   output difference for ``m{l}``, and for head ``a{l}.h{h}`` the change of the attention
   sublayer's residual contribution when only that head's z is set to its corrupted value in
   the clean run (one single-layer forward per layer, batched over heads). Without post-norms
   that is ``(z_corr - z_clean)_h @ W_O^h``; on Gemma-2/3 and OLMo-2 it goes through the
   post-attention norm with every other head clean.
2. q/k/v receivers of layer ``l``: the layer is run once (single block, batched over senders)
   on ``clean resid_pre[l] + delta_s``, so ``ln1`` (and any QK-norm and rotary after the hook)
   act on the edited residual; the resulting q (per query head) or k / v (per KV head) of
   the receiver unit replaces the clean one at ``hook_q/k/v`` in a clean run from layer ``l``.
   Under GQA a k/v edit changes every query head of the KV group: the receiver is the KV head.
3. MLP receivers: ``clean mlp input + delta_s`` at the MLP's input hook (``ln2.hook_in``, the
   residual before the MLP's norm, or ``mlp.hook_in`` where the block has no pre-MLP norm),
   in a clean run from block ``l``.
4. Logits: ``clean final residual + delta_s``, which only the final norm reads; the metric
   reads END only, so no block runs: the model's own tail (final norm, unembedding, final
   soft-capping) maps the edited END vectors of every logits edge to logits in one call
   (:func:`logits_effects`). Without prefix reuse, the edit goes to the last block's
   ``hook_resid_post`` in a run of that block instead.

Steps 2 and 3 batch many edges into one forward, one slice per edge; ``slices`` bounds that.
Which edges share a forward is chosen by :func:`start_groups`: a forward runs from the
earliest block among its edges, so mixing an edge into layer 2 with one into layer 25 makes
the latter rerun 23 clean blocks; on a compute-bound CPU edges into different blocks run
apart, where a forward's fixed cost dominates they share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headscope.circuits.graph import Edge, EdgeGraph, Receiver
from headscope.errors import HeadscopeError
from headscope.patching.baselines import check_gap
from headscope.patching.engine import Edit, PatchEngine, RunCache, shared_prefix
from headscope.patching.heads import head_masks


@dataclass
class EdgeRuns:
    """Cached clean/corrupted runs and every sender's output difference.

    Attributes:
        clean, corrupted: engine caches (resid_pre per layer; z, attn_out, mlp_out, the MLP
            input and resid_post per layer).
        deltas: sender name -> (n, pos, d_model) corrupted minus clean output.
        prefix: leading positions shared by clean and corrupted tokens.
        mlp_act: the engine act of the MLP input (``ln2_in`` or ``mlp_in``).
        clean_metric, corrupted_metric: (n,) metric of the two runs.
    """

    clean: RunCache
    corrupted: RunCache
    deltas: dict[str, torch.Tensor]
    prefix: int
    mlp_act: str
    clean_metric: torch.Tensor
    corrupted_metric: torch.Tensor
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor


def mlp_input_act(model: Any) -> str:
    """``ln2_in`` where blocks have a pre-MLP norm (its input is the MLP's residual), else ``mlp_in``."""
    return "ln2_in" if "blocks.0.ln2.hook_in" in model.bridge.hook_dict else "mlp_in"


def _stop(model: Any, layer: int) -> int | None:
    return layer + 1 if layer + 1 < model.n_layers else None


def prepare(engine: PatchEngine, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, graph: EdgeGraph) -> EdgeRuns:
    """Cache both runs and compute every sender's ``delta_s`` (see the module docstring)."""
    if clean_tokens.shape != corrupted_tokens.shape:
        raise HeadscopeError("clean and corrupted tokens must have the same shape for edge patching.")
    model = engine.model
    mlp_act = mlp_input_act(model)
    acts = ("z", "attn_out", "mlp_out", mlp_act, "resid_post")
    clean = engine.cache_run(clean_tokens, acts=acts)
    corrupted = engine.cache_run(corrupted_tokens, acts=acts)
    clean_metric = engine.metric(clean.end_logits).float().cpu()
    corrupted_metric = engine.metric(corrupted.end_logits).float().cpu()
    if not torch.equal(clean_tokens, corrupted_tokens):
        check_gap(clean_metric, corrupted_metric)
    n, pos = clean_tokens.shape
    deltas: dict[str, torch.Tensor] = {"input": corrupted.resid_pre[0] - clean.resid_pre[0]}
    heads = list(range(model.n_heads))
    for layer in range(model.n_layers):
        deltas[f"m{layer}"] = corrupted.acts[("mlp_out", layer)] - clean.acts[("mlp_out", layer)]
        mask = head_masks("z", [(h, None) for h in heads], n, pos, model.n_heads)
        edit = Edit("z", layer, mask, corrupted.acts[("z", layer)].unsqueeze(0))
        _, got = engine.run_edits(layer, clean.resid_pre[layer], [edit], k=len(heads),
                                  stop_at_layer=_stop(model, layer), capture=[("attn_out", layer)])
        out = got[("attn_out", layer)].view(len(heads), n, pos, -1) - clean.acts[("attn_out", layer)]
        for h in heads:
            deltas[f"a{layer}.h{h}"] = out[h]
    return EdgeRuns(clean, corrupted, deltas, shared_prefix(clean_tokens, corrupted_tokens), mlp_act,
                    clean_metric, corrupted_metric, clean_tokens, corrupted_tokens)


def receiver_stream(runs: EdgeRuns, r: Receiver, n_layers: int) -> tuple[str, int, torch.Tensor]:
    """(engine act, layer, clean residual (n, pos, d)) of the site an MLP/logits receiver reads."""
    if r.kind == "mlp":
        return runs.mlp_act, r.layer, runs.clean.acts[(runs.mlp_act, r.layer)]
    if r.kind == "logits":
        return "resid_post", n_layers - 1, runs.clean.acts[("resid_post", n_layers - 1)]
    return "resid_pre", r.layer, runs.clean.resid_pre[r.layer]


def head_inputs(engine: PatchEngine, runs: EdgeRuns, layer: int, senders: Sequence[str],
                scale: float = 1.0) -> dict[str, torch.Tensor]:
    """q, k, v of layer ``layer`` computed from ``clean resid_pre + scale * delta_s`` per sender.

    Returns:
        act -> (len(senders), n, pos, units, d_head) (units: query heads for q, KV heads for k/v).
    """
    model = engine.model
    base = runs.clean.resid_pre[layer]
    n = base.shape[0]
    out: dict[str, list[torch.Tensor]] = {a: [] for a in "qkv"}
    for chunk in engine.chunks(list(senders), base.shape[1], "senders"):
        k = len(chunk)
        inp = torch.stack([base + scale * runs.deltas[s] for s in chunk]).flatten(0, 1)
        caught: dict[str, torch.Tensor] = {}

        hooks = [(f"blocks.{layer}.attn.hook_{a}", _keeper(caught, a)) for a in "qkv"]
        with torch.inference_mode():
            engine._run(inp, layer, hooks, k=k, stop_at_layer=_stop(model, layer))
        for a in "qkv":
            out[a].append(caught[a].view(k, n, *caught[a].shape[1:]))
    return {a: torch.cat(v) for a, v in out.items()}


def _keeper(store: dict[str, torch.Tensor], act: str):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> None:
        store[act] = x.detach().clone()

    return fn


def _start_layer(e: Edge, n_layers: int) -> int:
    """The first block a patched run of edge ``e`` must execute (logits edges without the tail path)."""
    return n_layers - 1 if e.receiver.kind == "logits" else e.receiver.layer


def start_groups(starts: Sequence[int], n_layers: int, slice_tokens: float, overhead: float,
                 step: int) -> list[list[int]]:
    """Edge indices cut into forwards: each forward runs from its earliest start block.

    An edge batched with edges into earlier blocks reruns those blocks for nothing (its slice
    is clean there), so edges are sorted by start block and cut into contiguous groups that
    minimise ``sum over forwards of (blocks run) * (overhead + slices * slice_tokens)``
    (an exact dynamic programme over the distinct start blocks, as
    :meth:`~headscope.patching.engine.PatchEngine.end_groups` does over END positions); a
    group with more than ``step`` edges is split into forwards of ``step`` slices. When a
    forward's fixed cost dominates (GPU, short prompts) everything shares few forwards;
    where compute dominates (CPU) each start block gets its own.

    Args:
        starts: start block of each edge.
        n_layers: blocks in the model.
        slice_tokens: tokens one slice computes per block (the rows' windows).
        overhead: the fixed cost of a forward per block run, in tokens.
        step: most slices per forward.

    Returns:
        lists of edge indices, one per forward, in increasing start block.
    """
    from headscope.patching.grouping import cheapest_cuts

    order = sorted(range(len(starts)), key=lambda i: starts[i])
    values = sorted(set(starts))
    counts = [sum(1 for s in starts if s == v) for v in values]
    bounds = cheapest_cuts(counts, lambda i, j, edges: (n_layers - values[i])
                           * (-(-edges // step) * overhead + edges * slice_tokens))
    out: list[list[int]] = []
    lo = 0
    for i, j in bounds:
        size = sum(counts[i:j])
        group = order[lo : lo + size]
        out += [group[a : a + step] for a in range(0, size, step)]
        lo += size
    return out


def logits_effects(engine: PatchEngine, runs: EdgeRuns, edges: Sequence[Edge], scale: float, step: int) -> torch.Tensor:
    """Metric of edges into the logits: no block runs, only the model's tail at END.

    The logits input is the final residual, which only the final norm reads, and the metric
    reads END only: ``metric(tail(clean resid_post[L-1][END] + scale * delta_s[END]))``,
    ``step`` edges per tail run (:meth:`~headscope.patching.engine.PatchEngine.final_logits`).

    Returns:
        (len(edges), n) metric values.
    """
    model = engine.model
    n = runs.clean_tokens.shape[0]
    end = engine.end
    rows = torch.arange(n, device=end.device)
    base = runs.clean.acts[("resid_post", model.n_layers - 1)]
    at_end = base[rows.to(base.device), end.to(base.device)]
    out = []
    for lo in range(0, len(edges), step):
        chunk = edges[lo : lo + step]
        x = torch.stack([at_end + scale * runs.deltas[e.sender.name][rows, end] for e in chunk])
        out.append(engine.metric(engine.final_logits(x.flatten(0, 1))).view(len(chunk), n))
    return torch.cat(out)


def exact_edge_effects(
    engine: PatchEngine,
    runs: EdgeRuns,
    edges: Sequence[Edge],
    scale: float = 1.0,
    slices: int | None = None,
) -> torch.Tensor:
    """Exact per-prompt effects of patching each edge alone (noising, see the module docstring).

    Edges into the logits run only the model's tail (final norm and unembedding) at END
    (:func:`logits_effects`). The other edges are cut into forwards by :func:`start_groups`
    (at most ``slices`` edges each); a forward runs once from its earliest start block, each
    slice carrying its own edge's edit (edits of edges into later blocks leave the earlier
    blocks of their slice clean, so the result is the same as a run from their own block).

    Args:
        engine: the engine the runs were prepared on.
        runs: from :func:`prepare`.
        edges: the edges to patch.
        scale: patch ``clean + scale * delta_s`` instead of the corrupted output (a finite
            difference along the edge for small ``scale``).
        slices: most edges per forward (default: the engine's row budget; 1 = one forward per edge).

    Returns:
        (len(edges), n) ``metric(patched) - metric(clean)``.
    """
    model = engine.model
    n, pos = runs.clean_tokens.shape
    clean_metric = engine.metric(runs.clean.end_logits).float().cpu()  # the engine's metric (may be KL)
    result = torch.full((len(edges), n), float("nan"))
    step = slices or engine.slices_per_chunk(pos)
    tail = engine.prefix_reuse
    final = [i for i, e in enumerate(edges) if tail and e.receiver.kind == "logits"]
    if final:
        result[final] = logits_effects(engine, runs, [edges[i] for i in final], scale, step).float().cpu() - clean_metric
    rest = [i for i, e in enumerate(edges) if not (tail and e.receiver.kind == "logits")]
    inputs: dict[int, dict[str, torch.Tensor]] = {}
    where: dict[int, dict[str, int]] = {}
    head_edges = [edges[i] for i in rest if edges[i].receiver.kind == "head"]
    for layer in sorted({e.receiver.layer for e in head_edges}):
        senders = list(dict.fromkeys(e.sender.name for e in head_edges if e.receiver.layer == layer))
        where[layer] = {s: j for j, s in enumerate(senders)}
        inputs[layer] = head_inputs(engine, runs, layer, senders, scale)
    prefix = engine.usable_prefix(runs.clean, runs.prefix)
    slice_tokens = float((engine.end.cpu() + 1 - prefix).sum()) if engine.windows else float(n * pos)
    starts = [_start_layer(edges[i], model.n_layers) for i in rest]
    for group in start_groups(starts, model.n_layers, slice_tokens, engine.forward_overhead_tokens, step):
        chunk = [rest[g] for g in group]
        k = len(chunk)
        start_layer = min(_start_layer(edges[i], model.n_layers) for i in chunk)
        sites: dict[tuple[str, int], list[tuple[int, Edge]]] = {}
        for j, i in enumerate(chunk):
            e = edges[i]
            if e.receiver.kind == "head":
                sites.setdefault((e.receiver.input, e.receiver.layer), []).append((j, e))
            else:
                act, layer, _ = receiver_stream(runs, e.receiver, model.n_layers)
                sites.setdefault((act, layer), []).append((j, e))
        edits = []
        for (act, layer), mine in sites.items():
            if act in "qkv":
                units = inputs[layer][act].shape[3]
                mask = torch.zeros(k, n, pos, units, dtype=torch.bool)
                pick = torch.zeros(k, dtype=torch.long)
                for j, e in mine:
                    mask[j, :, :, e.receiver.unit] = True
                    pick[j] = where[layer][e.sender.name]
                edits.append(Edit(act, layer, mask, inputs[layer][act][pick]))
            else:
                site = receiver_stream(runs, mine[0][1].receiver, model.n_layers)[2]
                mask = torch.zeros(k, n, pos, dtype=torch.bool)
                source = site.unsqueeze(0).repeat(k, 1, 1, 1)
                for j, e in mine:
                    mask[j] = True
                    source[j] = site + scale * runs.deltas[e.sender.name]
                edits.append(Edit(act, layer, mask, source))
        vals, _ = engine.run_edits(start_layer, runs.clean.resid_pre[start_layer], edits, k,
                                   base=runs.clean, shared_prefix=runs.prefix)
        assert vals is not None
        result[chunk] = vals.float().cpu() - clean_metric
    return result
