"""The tracer: one place that owns hooking, batching and the GQA head mapping.

Analyzers never register hooks. They describe what they want (activation kinds, layers,
heads, reducers) and get labelled tensors back in stable shapes (see :mod:`names`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
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
    """Sorted unique layers and the heads in the given order (default all), both checked."""
    layer_list = list(range(model.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    head_list = list(range(model.n_heads)) if heads is None else list(dict.fromkeys(int(h) for h in heads))
    for layer in layer_list:
        model.check_head(layer, 0)
    for head in head_list:
        model.check_head(0, head)
    if not layer_list or not head_list:
        raise TracerError("nothing to trace: give at least one layer and one head.")
    return layer_list, head_list


@dataclass(frozen=True, eq=False)
class _TraceOptions:
    """:func:`trace`'s keyword options (as documented there), grouped for its helpers.

    :func:`_resolve_options` applies the implications between them (``use_cache`` or a cache
    -> ``keep_logits`` and one chunk; ``logit_positions`` -> ``keep_logits``) and sets
    ``past_in``, the token history of the incoming cache (read before the run extends it).
    """

    acts: Sequence[str]
    reducers: Sequence[Reducer]
    batch_size: int | None
    expand_kv: bool
    keep_logits: bool
    attention_mask: torch.Tensor | None
    progress: bool | str
    interventions: Sequence[Any]
    use_cache: bool
    past_key_values: Any
    logit_positions: torch.Tensor | None
    past_in: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class _Selection:
    """The traced layers and query heads, with the index tensors that select them.

    Attributes:
        layers: traced layers, sorted.
        heads: selected query heads, in the order of every head axis.
        kv_head_of: query head -> KV head, for every query head of the model.
        head_index: (len(heads),) the selected query heads, on the model's device.
        kv_index: (len(heads),) the KV head each selected query head reads.
        all_heads: the selection is every head in order (nothing to index).
    """

    layers: list[int]
    heads: list[int]
    kv_head_of: dict[int, int]
    head_index: torch.Tensor
    kv_index: torch.Tensor
    all_heads: bool


@dataclass
class _RunOutput:
    """What the chunked forward passes returned: chunk count, logits per chunk, the KV cache."""

    n_chunks: int
    logit_chunks: list[torch.Tensor]
    past_key_values: Any


_Wants = dict[str, list[tuple[str, str | Reducer]]]


def _check_request(model: Any, tokens: torch.Tensor, acts: Sequence[str], reducers: Sequence[Reducer]) -> None:
    """One-line errors for unknown activations (asked for or read by a reducer) and bad tokens."""
    unknown = [a for a in acts if a not in ACTIVATIONS]
    if unknown:
        raise TracerError(f"unknown activation {unknown}: choose from {list(ACTIVATIONS)}.")
    for r in reducers:
        if r.act not in ACTIVATIONS:
            raise TracerError(f"reducer '{r.name}' reads unknown activation '{r.act}'.")
    check_tokens(model, tokens)
    if tokens.ndim != 2:
        raise TracerError(f"tokens must be (batch, pos); got shape {tuple(tokens.shape)}.")


def _resolve_options(model: Any, tokens: torch.Tensor, opts: _TraceOptions) -> _TraceOptions:
    """Check ``opts`` against ``tokens`` (batch, pos) and apply the implications between options."""
    _check_request(model, tokens, opts.acts, opts.reducers)
    past = opts.past_key_values
    n_past = 0 if past is None else int(past.get_seq_length())
    past_in = None if past is None else history_of(past)
    model.check_length(n_past + int(tokens.shape[1]))
    if opts.use_cache or past is not None:
        opts = replace(opts, use_cache=True, keep_logits=True, batch_size=None)
    if opts.logit_positions is not None:
        opts = replace(opts, keep_logits=True)
        if opts.logit_positions.shape != (tokens.shape[0],):
            raise TracerError(f"logit_positions must be ({tokens.shape[0]},); got {tuple(opts.logit_positions.shape)}.")
    return replace(opts, past_in=past_in)


def _selection(model: Any, layers: Iterable[int] | None, heads: Iterable[int] | None) -> _Selection:
    """Check the layer / head selection and build its GQA map and index tensors."""
    layer_list, head_list = _check_selection(model, layers, heads)
    kv_head_of = {h: model.kv_head(h) for h in range(model.n_heads)}
    return _Selection(
        layers=layer_list,
        heads=head_list,
        kv_head_of=kv_head_of,
        head_index=torch.tensor(head_list, device=model.device),
        kv_index=torch.tensor([kv_head_of[h] for h in head_list], device=model.device),
        all_heads=head_list == list(range(model.n_heads)),
    )


def _plan_hooks(layers: list[int], acts: Sequence[str], reducers: Sequence[Reducer]) -> _Wants:
    """One hook per (hook name, layer): hook name -> the (act, act or reducer) it serves, in order."""
    wants: _Wants = defaultdict(list)
    for layer in layers:
        for act in acts:
            wants[hook_name(act, layer)].append((act, act))
        for r in reducers:
            wants[hook_name(r.act, layer)].append((r.act, r))
    return wants


def _select(model: Any, sel: _Selection, expand_kv: bool, act: str, tensor: torch.Tensor, layer: int) -> torch.Tensor:
    """The selected heads of one hooked activation, in the shapes of :mod:`headscope.trace.names`.

    ``pattern`` / ``scores`` (batch, head, q, k) are indexed on axis 1; ``q`` / ``z`` (batch,
    pos, head, d_head) on axis 2; ``k`` / ``v`` on axis 2 from KV heads to query heads (raw KV
    heads without ``expand_kv``); ``result`` is ``z`` times each head's ``W_O``: (batch, pos,
    head, d_model).
    """
    if act in ("pattern", "scores"):
        return tensor if sel.all_heads else tensor.index_select(1, sel.head_index)
    if act in ("k", "v"):
        if not expand_kv:
            return tensor
        if tensor.shape[2] == model.n_heads:
            return tensor if sel.all_heads else tensor.index_select(2, sel.head_index)
        return tensor.index_select(2, sel.kv_index)
    if act == "result":
        w_o = model.bridge.blocks[layer].attn.W_O  # (head, d_head, d_model)
        z = tensor if sel.all_heads else tensor.index_select(2, sel.head_index)
        w = w_o if sel.all_heads else w_o.index_select(0, sel.head_index)
        return torch.einsum("bphd,hdm->bphm", z, w.to(z.dtype))
    return tensor if sel.all_heads else tensor.index_select(2, sel.head_index)


class _Capture:
    """The capture hooks of one trace and what they collected, chunk by chunk.

    ``chunks`` / ``red_chunks``: (act or reducer name, layer) -> one tensor per chunk;
    ``fired``: hook name -> times it fired. Without ``keep_logits`` the forward pass is ended
    as soon as the last wanted hook of the chunk has fired.
    """

    def __init__(self, model: Any, sel: _Selection, opts: _TraceOptions) -> None:
        self.model, self.sel, self.expand_kv = model, sel, opts.expand_kv
        self.stop_early = not opts.keep_logits
        self.wants = _plan_hooks(sel.layers, opts.acts, opts.reducers)
        self.layer_of_hook = {hook_name(a, layer): layer for layer in sel.layers for a in ACTIVATIONS}
        self.chunks: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
        self.red_chunks: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
        self.fired: dict[str, int] = defaultdict(int)
        self.state: dict[str, Any] = {}

    def start_chunk(self, batch: torch.Tensor) -> None:
        """Reset the per-chunk state for ``batch`` (chunk, pos): its tokens, reducer scratch, pending hooks."""
        self.state["tokens"] = batch
        self.state["cache"] = {}
        self.state["pending"] = set(self.wants)

    def hooks(self) -> list[tuple[str, Any]]:
        """The bridge forward hooks, one per wanted hook name."""
        return [(name, self._make_hook(name)) for name in self.wants]

    def _make_hook(self, name: str):  # noqa: ANN202 - hook signature is the bridge's
        """The hook at ``name``: keeps or reduces every act it serves, stops early when done."""
        # The bridge's own stop_at_layer ignores stop_at_layer == n_layers, so we raise its
        # exception ourselves.
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        layer = self.layer_of_hook[name]
        state = self.state

        def hook(tensor: torch.Tensor, hook: Any) -> None:
            self.fired[name] += 1
            state["pending"].discard(name)
            ctx = ReduceContext(layer, tuple(self.sel.heads), state["tokens"], state["cache"])
            for act, what in self.wants[name]:
                value = _select(self.model, self.sel, self.expand_kv, act, tensor.detach(), layer)
                if isinstance(what, Reducer):
                    self.red_chunks[(what.name, layer)].append(what.fn(value, ctx))
                else:
                    self.chunks[(act, layer)].append(value.clone())
            if self.stop_early and not state["pending"]:
                raise StopAtLayerException(None)
            return None

        return hook

    def check_fired(self, n_chunks: int) -> None:
        """Raise :class:`TracerError` unless every hook fired once per chunk."""
        missing = [name for name in self.wants if self.fired[name] != n_chunks]
        if missing:
            raise TracerError(
                f"hooks did not fire: {missing[:3]}{'...' if len(missing) > 3 else ''}. The attention "
                "implementation skipped them; load the model through headscope.load_model (it forces "
                "eager attention) or set attn_implementation='eager'."
            )


def _chunk_inputs(model: Any, opts: _TraceOptions, rows: slice, n_rows: int, past: Any) -> tuple[list[Any], dict[str, Any]]:
    """A chunk's editing hooks (interventions, the logit-position gather) and forward kwargs.

    ``rows`` is the chunk's slice of the batch and ``n_rows`` its length.
    """
    from headscope.trace.hooks import intervention_hooks

    kwargs: dict[str, Any] = {}
    if opts.attention_mask is not None:
        kwargs["attention_mask"] = opts.attention_mask[rows].to(model.device)
    if past is not None:
        kwargs["past_key_values"] = past
    edits = intervention_hooks(model, opts.interventions, slice(rows.start, rows.start + n_rows))
    if opts.logit_positions is not None:
        edits = [*edits, ("unembed.hook_in", gather_positions(opts.logit_positions[rows]))]
    return edits, kwargs


def _run_chunks(model: Any, tokens: torch.Tensor, opts: _TraceOptions, capture: _Capture) -> _RunOutput:
    """Run ``tokens`` (batch, pos) through the bridge in chunks of ``opts.batch_size`` rows.

    Without ``keep_logits`` each pass ends after the last wanted hook has fired: later blocks
    and the (d_vocab-wide) unembedding are never computed. Logits are (chunk, pos, d_vocab), or
    (chunk, 1, d_vocab) with ``logit_positions``.
    """
    fwd_hooks = capture.hooks()
    n = int(tokens.shape[0])
    step = n if not opts.batch_size else max(1, int(opts.batch_size))
    starts = list(range(0, n, step))
    label = opts.progress if isinstance(opts.progress, str) else "tracing"
    return_type = ("logits_and_cache" if opts.use_cache else "logits") if opts.keep_logits else None
    logit_chunks: list[torch.Tensor] = []
    past = opts.past_key_values
    for iv in opts.interventions:
        iv.prepare(model)
    with torch.inference_mode():
        for start in progress_bar(starts, label, enabled=bool(opts.progress) and len(starts) > 1):
            batch = tokens[start : start + step].to(model.device)
            capture.start_chunk(batch)
            edits, kwargs = _chunk_inputs(model, opts, slice(start, start + step), len(batch), past)
            with quiet_cache_deprecation():
                out = model.bridge.run_with_hooks(batch, fwd_hooks=edits + fwd_hooks, return_type=return_type, **kwargs)
            if opts.use_cache:
                out, past = out
            if opts.keep_logits:
                logit_chunks.append(out.detach())
    return _RunOutput(n_chunks=len(starts), logit_chunks=logit_chunks, past_key_values=past)


def _assemble(tokens: torch.Tensor, sel: _Selection, capture: _Capture, run: _RunOutput, use_cache: bool) -> Trace:
    """The :class:`Trace`: chunks concatenated along the batch axis."""
    return Trace(
        layers=sel.layers,
        heads=sel.heads,
        kv_head_of=sel.kv_head_of,
        tokens=tokens,
        acts={key: torch.cat(parts) for key, parts in capture.chunks.items()},
        reductions={key: torch.cat(parts) for key, parts in capture.red_chunks.items()},
        logits=torch.cat(run.logit_chunks) if run.logit_chunks else None,
        past_key_values=run.past_key_values if use_cache else None,
    )


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
    opts = _resolve_options(model, tokens, _TraceOptions(
        acts=acts, reducers=reducers, batch_size=batch_size, expand_kv=expand_kv, keep_logits=keep_logits,
        attention_mask=attention_mask, progress=progress, interventions=interventions, use_cache=use_cache,
        past_key_values=past_key_values, logit_positions=logit_positions))
    sel = _selection(model, layers, heads)
    capture = _Capture(model, sel, opts)
    run = _run_chunks(model, tokens, opts, capture)
    if opts.use_cache:
        _check_and_remember(model, opts.past_in, tokens, run.past_key_values, run.logit_chunks[0],
                            opts.logit_positions, opts.interventions)
    capture.check_fired(run.n_chunks)
    return _assemble(tokens, sel, capture, run, opts.use_cache)


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
