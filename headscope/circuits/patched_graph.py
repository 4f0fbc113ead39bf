"""The model with a set of edges removed: each removed edge carries the sender's corrupted output.

A run in which every receiver input reads

``current residual + sum over removed edges s -> input of (corrupted output of s - current output of s)``

(Conmy et al. 2023, ACDC, Sec. 2: a removed edge is patched to the corrupted run; "current"
is the run being computed, so an edge's effect includes the removals upstream of it). With no
edge removed it is the clean run; with every edge removed it is the corrupted run (on families
without post-norms, where head outputs add up to the attention sublayer's output); with one
edge removed it is exact edge patching (:mod:`.exact`).

Computed block by block on the clean tokens, up to three single-block forwards per layer:

1. q/k/v of the receiver units that have removed edges, from their own edited residuals
   (one slice per such unit);
2. with those q/k/v written in, the current attention output and each head's
   current-to-corrupted output difference: the block with that head's z set to its corrupted
   value (one slice per head, plus the unedited one), as in :func:`.exact.prepare`;
3. the block with the q/k/v written in and the MLP input shifted by its removed edges'
   deltas; it yields the MLP's difference and the next residual (the last block runs on to the
   logits, the final residual shifted by the logits' deltas).

**Restarting at a layer.** A run's inputs to layer ``L`` depend only on the removed edges into
receivers of layers before ``L``. A run can record them (:class:`GraphPrefix`: the residual
entering each layer and every sender's difference), and a later run whose removals differ only
in receivers of layers ``>= L`` restarts there instead of at the embedding. ACDC's order (the
logits first, then receivers layer by layer back to the embedding) changes only such receivers,
so greedy pruning runs one full pass and then, per trial removal, the layers from the
receiver's on (:func:`headscope.circuits.prune.greedy_prune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.circuits.exact import EdgeRuns, _stop
from headscope.circuits.graph import EdgeGraph
from headscope.patching.engine import PatchEngine, hook_alias


def _keep(store: dict[str, torch.Tensor], key: str):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> None:
        store[key] = x.detach().clone()

    return fn


def _write_units(new: torch.Tensor, units: list[int], k: int):  # noqa: ANN202
    """Hook: units ``units`` of a (k*n, pos, units, d) activation := ``new`` (n, pos, units, d)."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        view = x.view(k, -1, *x.shape[1:]).clone()
        view[:, :, :, units] = new[:, :, units].to(x.dtype)
        return view.view(x.shape)

    return fn


def _add(delta: torch.Tensor, k: int):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return (x.view(k, -1, *x.shape[1:]) + delta.to(x.dtype)).view(x.shape)

    return fn


def _swap_head_z(corrupt_z: torch.Tensor, n_heads: int):  # noqa: ANN202
    """Hook on z of ``n_heads + 1`` slices: slice ``1 + h`` gets head h's corrupted z."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        view = x.view(n_heads + 1, -1, *x.shape[1:]).clone()
        for h in range(n_heads):
            view[1 + h, :, :, h] = corrupt_z[:, :, h].to(x.dtype)
        return view.view(x.shape)

    return fn


@dataclass
class GraphPrefix:
    """What a run of :func:`graph_metric` computed before each layer, for restarting there.

    Attributes:
        resid: the residual entering each layer, ``resid[l]`` (n, pos, d_model).
        deltas: each sender's corrupted-minus-current output difference (n, pos, d_model), by
            sender name (``input``, ``a{l}.h{h}``, ``m{l}``).
        removed: the removal set (E,) of the run that recorded them.
    """

    resid: list[torch.Tensor] = field(default_factory=list)
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    removed: torch.Tensor | None = None


def restart_layer(graph: EdgeGraph, removed: torch.Tensor, prefix: GraphPrefix) -> int:
    """The first layer whose inputs differ between ``prefix``'s run and a run removing ``removed`` (E,).

    That is the lowest layer of a receiver whose removed edges differ (the logits count as the
    last block, which ends in them); ``n_layers`` when the sets are equal.
    """
    assert prefix.removed is not None
    n_layers = len(prefix.resid)
    changed = (removed != prefix.removed).nonzero().flatten().tolist()
    return min((min(graph.edges[i].receiver.layer, n_layers - 1) for i in changed), default=n_layers)


@torch.inference_mode()
def graph_metric(engine: PatchEngine, runs: EdgeRuns, graph: EdgeGraph, removed: torch.Tensor,
                 record: GraphPrefix | None = None, start: GraphPrefix | None = None,
                 sender_masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-prompt metric of the clean run with the edges where ``removed`` (E,) is True patched.

    Args:
        record: filled with this run's per-layer inputs (see :class:`GraphPrefix`).
        start: a recorded run to restart from, at :func:`restart_layer` (the result is the same as
            a run from the embedding; only the layers before that one are skipped).
        sender_masks: head sender (``a{l}.h{h}``) -> (n, pos) bool, True where its removed edges
            carry its difference; elsewhere the difference is zero, which is the head's z patched at
            the True positions only (the attention output is position-wise in z: ``W_O`` and any
            post-attention norm act per position). Used for ``head_positions``
            (:mod:`headscope.circuits.nodes`).

    Returns:
        (n,) metric values (the engine's metric at END).
    """
    model = engine.model
    c, x = runs.clean, runs.corrupted
    into: dict[str, list[str]] = {}
    for e, rm in zip(graph.edges, removed.tolist(), strict=True):
        if rm:
            into.setdefault(e.receiver.key, []).append(e.sender.name)
    deltas: dict[str, torch.Tensor] = {"input": runs.deltas["input"]}

    def shift(key: str) -> torch.Tensor | None:
        names = into.get(key)
        return None if not names else torch.stack([deltas[s] for s in names]).sum(0)

    resid = c.resid_pre[0]
    first = 0
    if start is not None:
        first = min(restart_layer(graph, removed, start), model.n_layers - 1)
        resid, deltas = start.resid[first], dict(start.deltas)
    if record is not None:
        record.resid, record.deltas, record.removed = [], deltas, removed.clone()
        if start is not None:
            record.resid = start.resid[:first]
    metric: torch.Tensor | None = None
    for layer in range(first, model.n_layers):
        if record is not None:
            record.resid.append(resid)
        stop = _stop(model, layer)
        heads = [r for r in graph.receivers if r.kind == "head" and r.layer == layer and r.key in into]
        hooks: list[tuple[str, Any]] = []
        if heads:  # 1. q/k/v of the edited units
            k = len(heads)
            inp = torch.stack([resid + shift(r.key) for r in heads]).flatten(0, 1)
            caught: dict[str, torch.Tensor] = {}
            engine._run(inp, layer, [(hook_alias(a, layer), _keep(caught, a)) for a in "qkv"], k=k, stop_at_layer=stop)
            for a in "qkv":
                mine = [(i, r.unit) for i, r in enumerate(heads) if r.input == a]
                if mine:
                    acts = caught[a].view(k, -1, *caught[a].shape[1:])
                    new = acts[0].clone()
                    for i, u in mine:
                        new[:, :, u] = acts[i, :, :, u]
                    hooks.append((hook_alias(a, layer), _write_units(new, [u for _, u in mine], 1)))
        # 2. each head's corrupted-minus-current output difference: slice 0 is the current run,
        #    slice 1 + h has head h's z set to its corrupted value (as in exact.prepare)
        n_heads = model.n_heads
        swap_k = n_heads + 1
        swapped: dict[str, torch.Tensor] = {}
        swap_hooks = [(alias, _repeat_hook(fn, swap_k)) for alias, fn in hooks]
        swap_hooks += [(hook_alias("z", layer), _swap_head_z(x.acts[("z", layer)], n_heads)),
                       (hook_alias("attn_out", layer), _keep(swapped, "attn_out"))]
        engine._run(resid.repeat(swap_k, 1, 1), layer, swap_hooks, k=swap_k, stop_at_layer=_stop_early(model, layer))
        attn = swapped["attn_out"].view(swap_k, *resid.shape)
        for h in range(n_heads):
            name = f"a{layer}.h{h}"
            deltas[name] = attn[1 + h] - attn[0]
            if sender_masks and name in sender_masks:
                deltas[name] = torch.where(sender_masks[name].to(resid.device).unsqueeze(-1), deltas[name], 0.0)
        # 3. the block with the q/k/v edits and the MLP input shifted; the MLP's own difference is
        #    taken from its current output inside the same forward (the logits may read it)
        got: dict[str, torch.Tensor] = {}
        main = list(hooks)
        mlp_shift = shift(f"m{layer}<in>")
        if mlp_shift is not None:
            main.append((hook_alias(runs.mlp_act, layer), _add(mlp_shift, 1)))
        main.append((hook_alias("mlp_out", layer), _mlp_delta(got, deltas, x.acts[("mlp_out", layer)], f"m{layer}")))
        if stop is None:
            main.append((hook_alias("resid_post", layer), _add_late(lambda: shift("logits<in>"))))
        else:
            main.append((hook_alias("resid_post", layer), _keep(got, "resid_post")))
        out = engine._run(resid, layer, main, k=1, stop_at_layer=stop)
        if stop is None:
            metric = engine.metric(out)
            break
        resid = got["resid_post"]
    assert metric is not None
    return metric.float().cpu()


def _stop_early(model: Any, layer: int) -> int | None:
    return _stop(model, layer)


def _mlp_delta(got: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], corrupted: torch.Tensor, name: str):  # noqa: ANN202
    def fn(x: torch.Tensor, hook: Any) -> None:
        got["mlp_out"] = x.detach().clone()
        deltas[name] = corrupted.to(x.dtype) - got["mlp_out"]

    return fn


def _add_late(make: Any):  # noqa: ANN202
    """Hook adding ``make()`` (computed when the hook runs; None adds nothing)."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        delta = make()
        return x if delta is None else x + delta.to(x.dtype)

    return fn


def _repeat_hook(fn: Any, k: int):  # noqa: ANN202
    """A hook written for one slice applied to each of ``k`` stacked slices."""

    def wrapped(x: torch.Tensor, hook: Any) -> torch.Tensor:
        parts = x.view(k, -1, *x.shape[1:])
        return torch.cat([fn(parts[i], hook) for i in range(k)]).view(x.shape)

    return wrapped
