"""The tracer: one place that owns hooking, batching and the GQA head mapping.

Analyzers never register hooks. They describe what they want (activation kinds, layers,
heads, reducers) and get labelled tensors back in stable shapes (see :mod:`names`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.models.compat import quiet_cache_deprecation
from headscope.progress import progress_bar
from headscope.trace.decode_check import (
    CHECKED_STEPS,
    history_of,
    remember_history,
    verify_cached_step,
)
from headscope.trace.inputs import check_tokens
from headscope.trace.names import ACTIVATIONS, hook_name
from headscope.trace.reducers import ReduceContext, Reducer


class TracerError(HeadscopeError):
    """A hook that should have fired did not, or a request cannot be served."""


@dataclass
class Trace:
    """What a trace captured.

    Attributes:
        layers: traced layers, in order.
        heads: selected query heads, in the order of every head axis.
        kv_head_of: query head -> KV head (GQA grouping; identity without GQA).
        tokens: the input tokens, (batch, pos).
        acts: (act, layer) -> tensor, shapes as in :mod:`headscope.trace.names`.
        reductions: (reducer name, layer) -> tensor with leading (batch, head) axes.
        logits: (batch, pos, d_vocab) if ``keep_logits`` was set, else None.
    """

    layers: list[int]
    heads: list[int]
    kv_head_of: dict[int, int]
    tokens: torch.Tensor
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    reductions: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    past_key_values: Any = None

    def get(self, act: str, layer: int) -> torch.Tensor:
        """One activation at one layer."""
        if (act, layer) not in self.acts:
            raise TracerError(f"'{act}' at layer {layer} was not traced: add it to acts= / layers=.")
        return self.acts[(act, layer)]

    def stack(self, act: str) -> torch.Tensor:
        """An activation for all traced layers, stacked on a new axis 1: (batch, layer, ...)."""
        return torch.stack([self.get(act, layer) for layer in self.layers], dim=1)

    def reduced(self, name: str) -> torch.Tensor:
        """A reducer's output for all traced layers: (batch, layer, head, ...)."""
        missing = [layer for layer in self.layers if (name, layer) not in self.reductions]
        if missing:
            raise TracerError(f"reducer '{name}' has no output for layers {missing}.")
        return torch.stack([self.reductions[(name, layer)] for layer in self.layers], dim=1)


def _check_selection(model: Any, layers: Iterable[int] | None, heads: Iterable[int] | None) -> tuple[list[int], list[int]]:
    layer_list = list(range(model.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    head_list = list(range(model.n_heads)) if heads is None else list(dict.fromkeys(int(h) for h in heads))
    for layer in layer_list:
        model.check_head(layer, 0)
    for head in head_list:
        model.check_head(0, head)
    if not layer_list or not head_list:
        raise TracerError("nothing to trace: give at least one layer and one head.")
    return layer_list, head_list


def trace(
    model: Any,
    tokens: torch.Tensor,
    acts: Sequence[str] = (),
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    reducers: Sequence[Reducer] = (),
    batch_size: int | None = None,
    expand_kv: bool = True,
    keep_logits: bool = False,
    attention_mask: torch.Tensor | None = None,
    progress: bool | str = False,
    interventions: Sequence[Any] = (),
    use_cache: bool = False,
    past_key_values: Any = None,
    logit_positions: torch.Tensor | None = None,
) -> Trace:
    """Run ``model`` on ``tokens`` and capture per-head activations.

    Args:
        model: a :class:`headscope.models.Model`.
        tokens: (batch, pos) token ids.
        acts: activation kinds to keep whole (see :data:`ACTIVATIONS`).
        layers: layers to trace (default all).
        heads: query heads to keep (default all), the order of every head axis.
        reducers: reductions computed inside the hooks; their inputs are not kept.
        batch_size: split the batch into chunks of this size (default: one chunk).
        expand_kv: map k/v from KV heads to query heads (GQA); False keeps raw KV heads.
        keep_logits: also return the logits; otherwise the forward pass stops after the last
            traced layer, skipping later blocks and the unembedding.
        attention_mask: optional (batch, pos) mask for padded batches.
        progress: show a progress bar over chunks (a string is used as its label).
        interventions: :mod:`headscope.interventions` objects applied during the forward pass
            (before capture, so captured activations reflect them).
        use_cache: return the Hugging Face KV cache in ``Trace.past_key_values`` (implies
            ``keep_logits``; one chunk only). For incremental decoding.
        past_key_values: a cache from an earlier ``use_cache`` trace; ``tokens`` are then only
            the new positions, and pattern/scores rows cover the new queries over all keys,
            (batch, head, n_new, n_past + n_new). The first cached steps of each model are
            checked against a full recompute (:mod:`headscope.trace.decode_check`).
        logit_positions: optional (batch,) position per row (within ``tokens``): the logits are
            then computed at that position only, ``Trace.logits`` is (batch, 1, d_vocab) and
            the unembedding of every other position is skipped. Implies ``keep_logits``.

    Returns:
        A :class:`Trace`. Raises :class:`TracerError` if any hook failed to fire.
    """
    unknown = [a for a in acts if a not in ACTIVATIONS]
    if unknown:
        raise TracerError(f"unknown activation {unknown}: choose from {list(ACTIVATIONS)}.")
    for r in reducers:
        if r.act not in ACTIVATIONS:
            raise TracerError(f"reducer '{r.name}' reads unknown activation '{r.act}'.")
    check_tokens(model, tokens)
    if tokens.ndim != 2:
        raise TracerError(f"tokens must be (batch, pos); got shape {tuple(tokens.shape)}.")
    n_past = 0 if past_key_values is None else int(past_key_values.get_seq_length())
    past_in = None if past_key_values is None else history_of(past_key_values)
    model.check_length(n_past + int(tokens.shape[1]))
    if use_cache or past_key_values is not None:
        use_cache, keep_logits, batch_size = True, True, None
    if logit_positions is not None:
        keep_logits = True
        if logit_positions.shape != (tokens.shape[0],):
            raise TracerError(f"logit_positions must be ({tokens.shape[0]},); got {tuple(logit_positions.shape)}.")
    layer_list, head_list = _check_selection(model, layers, heads)
    kv_head_of = {h: model.kv_head(h) for h in range(model.n_heads)}
    head_index = torch.tensor(head_list, device=model.device)
    kv_index = torch.tensor([kv_head_of[h] for h in head_list], device=model.device)
    all_heads = head_list == list(range(model.n_heads))

    # one hook per (hook name, layer); it serves every act and reducer that reads it
    wants: dict[str, list[tuple[str, str | Reducer]]] = defaultdict(list)
    for layer in layer_list:
        for act in acts:
            wants[hook_name(act, layer)].append((act, act))
        for r in reducers:
            wants[hook_name(r.act, layer)].append((r.act, r))
    layer_of_hook = {hook_name(a, layer): layer for layer in layer_list for a in ACTIVATIONS}

    chunks: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    red_chunks: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    logit_chunks: list[torch.Tensor] = []
    fired: dict[str, int] = defaultdict(int)
    state: dict[str, Any] = {}

    def select(act: str, tensor: torch.Tensor, layer: int) -> torch.Tensor:
        if act in ("pattern", "scores"):
            return tensor if all_heads else tensor.index_select(1, head_index)
        if act in ("k", "v"):
            if not expand_kv:
                return tensor
            if tensor.shape[2] == model.n_heads:
                return tensor if all_heads else tensor.index_select(2, head_index)
            return tensor.index_select(2, kv_index)
        if act == "result":
            w_o = model.bridge.blocks[layer].attn.W_O  # (head, d_head, d_model)
            z = tensor if all_heads else tensor.index_select(2, head_index)
            w = w_o if all_heads else w_o.index_select(0, head_index)
            return torch.einsum("bphd,hdm->bphm", z, w.to(z.dtype))
        return tensor if all_heads else tensor.index_select(2, head_index)

    def make_hook(name: str):  # noqa: ANN202 - hook signature is the bridge's
        layer = layer_of_hook[name]

        def hook(tensor: torch.Tensor, hook: Any) -> None:
            fired[name] += 1
            state["pending"].discard(name)
            ctx = ReduceContext(layer, tuple(head_list), state["tokens"], state["cache"])
            for act, what in wants[name]:
                value = select(act, tensor.detach(), layer)
                if isinstance(what, Reducer):
                    red_chunks[(what.name, layer)].append(what.fn(value, ctx))
                else:
                    chunks[(act, layer)].append(value.clone())
            if stop_early and not state["pending"]:
                raise StopAtLayerException(None)
            return None

        return hook

    fwd_hooks = [(name, make_hook(name)) for name in wants]
    n = int(tokens.shape[0])
    step = n if not batch_size else max(1, int(batch_size))
    starts = list(range(0, n, step))
    # Without logits, end the forward pass as soon as the last wanted hook of the batch has
    # fired: later blocks and the (d_vocab-wide) unembedding are never computed. The bridge's
    # own stop_at_layer ignores stop_at_layer == n_layers, so we raise its exception ourselves.
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    stop_early = not keep_logits
    label = progress if isinstance(progress, str) else "tracing"
    bridge = model.bridge
    from headscope.trace.hooks import intervention_hooks

    for iv in interventions:
        iv.prepare(model)
    with torch.inference_mode():
        for start in progress_bar(starts, label, enabled=bool(progress) and len(starts) > 1):
            batch = tokens[start : start + step].to(model.device)
            state["tokens"] = batch
            state["cache"] = {}
            state["pending"] = set(wants)
            kwargs: dict[str, Any] = {}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask[start : start + step].to(model.device)
            if past_key_values is not None:
                kwargs["past_key_values"] = past_key_values
            edits = intervention_hooks(model, interventions, slice(start, start + len(batch)))
            if logit_positions is not None:
                edits = [*edits, ("unembed.hook_in", gather_positions(logit_positions[start : start + step]))]
            with quiet_cache_deprecation():
                out = bridge.run_with_hooks(
                    batch,
                    fwd_hooks=edits + fwd_hooks,
                    return_type=("logits_and_cache" if use_cache else "logits") if keep_logits else None,
                    **kwargs,
                )
            if use_cache:
                out, past_key_values = out
            if keep_logits:
                logit_chunks.append(out.detach())
    if use_cache:
        _check_and_remember(model, past_in, tokens, past_key_values, logit_chunks[0], logit_positions, interventions)
    missing = [name for name in wants if fired[name] != len(starts)]
    if missing:
        raise TracerError(
            f"hooks did not fire: {missing[:3]}{'...' if len(missing) > 3 else ''}. The attention "
            "implementation skipped them; load the model through headscope.load_model (it forces "
            "eager attention) or set attn_implementation='eager'."
        )
    return Trace(
        layers=layer_list,
        heads=head_list,
        kv_head_of=kv_head_of,
        tokens=tokens,
        acts={key: torch.cat(parts) for key, parts in chunks.items()},
        reductions={key: torch.cat(parts) for key, parts in red_chunks.items()},
        logits=torch.cat(logit_chunks) if logit_chunks else None,
        past_key_values=past_key_values if use_cache else None,
    )


def _check_and_remember(
    model: Any,
    past: torch.Tensor | None,
    tokens: torch.Tensor,
    cache: Any,
    logits: torch.Tensor,
    logit_positions: torch.Tensor | None,
    interventions: Sequence[Any],
) -> None:
    """Verify the model's first cached steps against a full recompute; record the cache's tokens."""
    if past is not None and model.decode_checks_done < CHECKED_STEPS:
        verify_cached_step(model, past, tokens, logits, logit_positions, interventions)
        model.decode_checks_done += 1
    remember_history(cache, past, tokens)


def gather_positions(positions: torch.Tensor):  # noqa: ANN202 - hook signature is the bridge's
    """Hook on the unembedding's input keeping one position per row: (b, pos, d) -> (b, 1, d)."""

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, positions.to(x.device)].unsqueeze(1)

    return hook
