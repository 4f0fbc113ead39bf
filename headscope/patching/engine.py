"""The patching engine: exact per-head patching as a few batched, truncated forwards.

Exact activation patching of every head (Meng et al. 2022; Wang et al. 2022) is usually run as
one forward pass per head (TransformerLens ``patching.get_act_patch_attn_head_out_all_pos``:
``n_layers * n_heads`` passes). The engine computes the same numbers with four savings:

1. **Batching.** The prompt batch (n rows) is replicated ``k`` times and slice ``i`` gets its
   own edit (a different head, position or sender), so one forward serves ``k`` patches.
   Each edit is a boolean mask over the activation (slice, row, position, head) and a source
   tensor; the hook applies ``torch.where(mask, source, act)``.
2. **Prefix reuse.** An edit at layer ``l`` leaves the residual entering layer ``l``
   unchanged, so the engine caches ``resid_pre`` of the base run at every layer and reruns only
   blocks ``l..L-1``. TransformerBridge's own ``start_at_layer`` swaps the residual in at block
   ``l`` but still executes blocks ``0..l-1`` (see its docstring), so it saves no compute; the
   engine therefore swaps blocks ``0..l-1`` of the HF model's block list for pass-through
   stand-ins (:class:`SkippedBlock`) for the duration of the call (the bridge then injects the
   cached residual into block ``l``). The list keeps its length, so HF's decoder loop still
   reads per-layer settings by the true layer index: mixed-layer models (Gemma-2/3, Qwen2/3
   with ``config.layer_types``) give each layer its own attention type (sliding or global) and,
   on Gemma-3, its own rotary base. (Handing HF a truncated list instead shifts those lookups
   by ``l`` layers: ``config.layer_types[i]`` is read from index 0.) Rotary embeddings and the
   causal mask are computed by HF exactly as in a full run, from absolute positions.
3. **Cheap unembedding.** A hook on ``unembed.hook_in`` keeps only each row's metric
   position, so the final norm and ``W_U`` run on ``rows`` vectors instead of
   ``rows * pos`` (RMSNorm/LayerNorm act per position, so this is exact up to matmul
   blocking, ~1e-5 in float32).
4. **Position windows.** Under causal attention nothing after a row's END can reach END, so
   rows are grouped by END and each group runs only positions ``..max END`` of the group
   (right padding is never computed). When the caller states that the first ``p`` positions
   are identical in every slice (``shared_prefix``: clean and corrupted prompts that agree on
   their first ``p`` tokens give identical activations there, so patching one into the other
   changes nothing there), those positions are not recomputed either: the base run's keys and
   values for them are handed to the model as a Hugging Face KV cache and only positions
   ``p..`` run (rotary positions come from the cache length, exactly as in decoding).
   Group boundaries are chosen by a small dynamic programme that trades computed tokens
   against a fixed per-forward overhead (``forward_overhead_tokens``).

Windows apply to runs that read the metric (no ``capture``/``stop_at_layer``); those fall back to
full-width forwards. Chunks are bounded by ``max_rows`` (rows per forward) for memory; a
progress bar reports them. Measured on SmolLM2-135M, IOI, 16 prompts (``benchmarks/
bench_patching.py``): all 270 heads in 28 s against 98 s for TransformerLens's sequential sweep,
with identical results; savings 2-3 together give about 2.6x, the windows the rest.

Every hook here is an intervention in the sense of :mod:`headscope.interventions`: this module
is the shared layer that owns hooking for patching analyses; analyzers describe edits only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headscope.errors import HeadscopeError
from headscope.models.compat import quiet_cache_deprecation
from headscope.progress import progress_bar
from headscope.trace.tracer import gather_positions

ACT_HOOKS = {
    "z": "blocks.{l}.attn.hook_z",
    "q": "blocks.{l}.attn.hook_q",
    "rot_q": "blocks.{l}.attn.hook_rot_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "pattern": "blocks.{l}.attn.hook_pattern",
}
PATCH_ACTS = tuple(ACT_HOOKS)
STREAM_HOOKS = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_post": "blocks.{l}.hook_resid_post",  # the last layer's feeds only the final norm
    "attn_out": "blocks.{l}.hook_attn_out",  # what the attention sublayer adds to the residual
    "mlp_out": "blocks.{l}.hook_mlp_out",  # what the MLP sublayer adds to the residual
    "ln2_in": "blocks.{l}.ln2.hook_in",  # the MLP's input residual, before its norm
    "mlp_in": "blocks.{l}.mlp.hook_in",  # the MLP module's input (after ln2 where there is one)
}
"""Residual-stream-shaped (n, pos, d_model) hook sites; edits there take masks (k, n, pos)."""


def hook_alias(act: str, layer: int) -> str:
    """Bridge hook alias for a patchable activation or a residual-stream site (:data:`STREAM_HOOKS`)."""
    if act in STREAM_HOOKS:
        return STREAM_HOOKS[act].format(l=layer)
    return ACT_HOOKS[act].format(l=layer)


@dataclass
class Edit:
    """Replace ``act`` at ``layer`` where ``mask`` is True by ``source``.

    Attributes:
        act: one of :data:`PATCH_ACTS`.
        layer: block index.
        mask: bool tensor (k, n, *act_shape[1:-1]) — per slice, row, and every axis of the
            activation except the last (for z/q/k/v: (k, n, pos, heads); for pattern:
            (k, n, heads, q_pos)).
        source: tensor broadcastable to (k, n, *act_shape[1:]) with the replacement values.
    """

    act: str
    layer: int
    mask: torch.Tensor
    source: torch.Tensor


@dataclass
class RunCache:
    """What a cached base run holds: per-layer residuals and activations, END logits, and the
    per-layer attention keys/values ``kv[l] = (keys, values)``, each (n, n_kv_heads, pos,
    d_head) as the model's KV cache stores them (None when the model returns no cache)."""

    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    end_logits: torch.Tensor | None = None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading positions where token batches ``a`` and ``b`` (n, pos) agree in every row.

    Activations there are identical in both runs (causal attention), so patching one run's
    activations into the other changes nothing at those positions.
    """
    differ = (a != b).any(0).nonzero()
    return int(differ[0]) if len(differ) else int(a.shape[1])


class SkippedBlock(nn.Module):
    """Stands in for a block before the start layer: returns its hidden states untouched.

    Its output is discarded anyway: the start block swaps in the cached residual.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]


class EmitBlock(nn.Module):
    """Stands in for the last block in a tail-only run: returns ``resid`` whatever it is given.

    With every earlier block a :class:`SkippedBlock`, the model's own final norm, unembedding
    and logit post-processing (e.g. Gemma-2's final soft-capping) then read ``resid``.
    """

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__()
        self.resid = resid

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.resid


def _find_layer_list(bridge: Any) -> tuple[nn.Module, str, nn.ModuleList]:
    """The HF ``ModuleList`` that holds the bridge's blocks, its owner and attribute name."""
    first = bridge.blocks[0]
    for owner in bridge.original_model.modules():
        for name, child in owner.named_children():
            if isinstance(child, nn.ModuleList) and len(child) and child[0] is first:
                return owner, name, child
    raise HeadscopeError(
        "cannot find the model's block list for prefix reuse; run with prefix_reuse=False."
    )


class PatchEngine:
    """Batched, prefix-reusing forwards for a model and a (n, pos) token shape.

    Args:
        model: a :class:`headscope.models.Model`.
        end: (n,) the metric position of each row.
        metric: per-row metric from END logits, ``(rows, d_vocab) -> (rows,)``; ``rows`` is a
            multiple of n (slices stacked in order).
        max_rows: most rows per forward (memory bound); default from ``memory_mb``.
        memory_mb: activation memory budget used to pick ``max_rows``.
        prefix_reuse: rerun only blocks ``l..L-1`` for an edit at layer ``l``.
        progress: show a progress bar over chunks.
        windows: run each END group only over the positions it needs (see the module
            docstring); exact for causal models.
        forward_overhead_tokens: the fixed cost of one forward, in computed tokens, used to
            decide how many END groups to split a batch into.
    """

    def __init__(
        self,
        model: Any,
        end: torch.Tensor,
        metric: Callable[[torch.Tensor], torch.Tensor],
        max_rows: int | None = None,
        memory_mb: float = 2048.0,
        prefix_reuse: bool = True,
        progress: bool = False,
        windows: bool = True,
        forward_overhead_tokens: int = 96,
    ) -> None:
        self.model = model
        self.bridge = model.bridge
        self.end = end.to(model.device)
        self.n = int(end.shape[0])
        self.metric = metric
        self.max_rows = max_rows
        self.memory_mb = memory_mb
        self.prefix_reuse = prefix_reuse
        self.progress = progress
        self._layers = _find_layer_list(self.bridge) if prefix_reuse else None
        self.windows = windows
        self.forward_overhead_tokens = forward_overhead_tokens

    # ------------------------------------------------------------------ sizing
    def rows_per_chunk(self, pos: int) -> int:
        """Rows per forward: ``max_rows`` or what fits in ``memory_mb`` (at least n)."""
        if self.max_rows:
            return max(self.n, int(self.max_rows))
        cfg = self.model.cfg
        d_mlp = int(getattr(cfg, "d_mlp", 4 * self.model.d_model) or 4 * self.model.d_model)
        per_row = pos * (4 * d_mlp + 8 * self.model.d_model + 3 * self.model.n_heads * pos) * 4
        return max(self.n, int(self.memory_mb * 2**20 // per_row))

    def slices_per_chunk(self, pos: int) -> int:
        return max(1, self.rows_per_chunk(pos) // self.n)

    # ------------------------------------------------------------------ base runs
    def cache_run(self, tokens: torch.Tensor, acts: Sequence[str] = ("z",), layers: Sequence[int] | None = None) -> RunCache:
        """Run ``tokens`` (n, pos) once; keep resid_pre and ``acts`` at every layer and the END logits."""
        layers = list(range(self.model.n_layers)) if layers is None else list(layers)
        out = RunCache()

        def keeper(act: str, layer: int) -> Callable[[torch.Tensor, Any], None]:
            def fn(x: torch.Tensor, hook: Any) -> None:
                if act == "resid_pre":
                    out.resid_pre[layer] = x.detach().clone()
                else:
                    out.acts[(act, layer)] = x.detach().clone()

            return fn

        hooks = [(hook_alias("resid_pre", layer), keeper("resid_pre", layer)) for layer in range(self.model.n_layers)]
        hooks += [(hook_alias(a, layer), keeper(a, layer)) for layer in layers for a in acts]
        with torch.inference_mode():
            out.end_logits, out.kv = self._run_keep_kv(tokens.to(self.model.device), hooks)
        return out

    def _run_keep_kv(self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]]) -> tuple[torch.Tensor, Any]:
        """A full forward from tokens that also returns the per-layer KV cache (or None)."""
        all_hooks = [*hooks, ("unembed.hook_in", self._gather_hook(1))]
        if not self.windows:
            return self.bridge.run_with_hooks(tokens, fwd_hooks=all_hooks)[:, 0], None
        with quiet_cache_deprecation():
            logits, cache = self.bridge.run_with_hooks(tokens, fwd_hooks=all_hooks, return_type="logits_and_cache")
        layers = getattr(cache, "layers", None)
        kv = None
        if layers is not None and len(layers) == self.model.n_layers:
            kv = [(layer.keys, layer.values) for layer in layers]
            if any(not isinstance(t, torch.Tensor) or t.shape[-2] != tokens.shape[1] for pair in kv for t in pair):
                kv = None  # e.g. a sliding-window cache that dropped positions: no prefix reuse
        return logits[:, 0], kv

    # ------------------------------------------------------------------ core forward
    @contextmanager
    def _skip_blocks_before(self, start: int):
        """Blocks ``0..start-1`` replaced by :class:`SkippedBlock` (the list keeps its length)."""
        if not self.prefix_reuse or start == 0 or self._layers is None:
            yield
            return
        owner, name, full = self._layers
        blocks = list(full)
        setattr(owner, name, nn.ModuleList([SkippedBlock() for _ in blocks[:start]] + blocks[start:]))
        try:
            yield
        finally:
            setattr(owner, name, full)

    def final_logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from residual vectors entering the final norm, by the model's own tail.

        The Hugging Face forward runs with every block stood in (blocks ``0..L-2`` pass
        through, the last one emits ``resid`` as a one-position sequence), so the final norm,
        the unembedding and any logit post-processing are exactly the model's. Norms act per
        position, so a vector's logits do not depend on the rest of its sequence.

        Args:
            resid: (rows, d_model) e.g. the last block's ``resid_post`` at END, edited.

        Returns:
            (rows, d_vocab) logits (float32 where the model computes in float32).
        """
        if self._layers is None:
            raise HeadscopeError("final_logits needs the model's block list; run with prefix_reuse=True.")
        owner, name, full = self._layers
        d_vocab = int(getattr(self.model.cfg, "d_vocab", 0) or 50_000)
        step = max(1, int(self.memory_mb * 2**20 // (4 * 4 * d_vocab)))
        parts = []
        for lo in range(0, int(resid.shape[0]), step):
            x = resid[lo : lo + step].to(self.model.device).unsqueeze(1)
            setattr(owner, name, nn.ModuleList([SkippedBlock() for _ in full[:-1]] + [EmitBlock(x)]))
            try:
                with torch.inference_mode():
                    parts.append(self.bridge.run_with_hooks(x, fwd_hooks=[])[:, 0])
            finally:
                setattr(owner, name, full)
        return torch.cat(parts)

    def _gather_hook(self, k: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        return gather_positions(self.end.repeat(k))

    def _run(
        self,
        inp: torch.Tensor,
        start: int,
        hooks: list[tuple[str, Callable]],
        k: int,
        from_tokens: bool = False,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor:
        """One forward; returns END logits (k*n, d_vocab), or None when stopping early."""
        all_hooks = list(hooks)
        if stop_at_layer is None:
            all_hooks.append(("unembed.hook_in", self._gather_hook(k)))
        if from_tokens:
            out = self.bridge.run_with_hooks(inp, fwd_hooks=all_hooks, stop_at_layer=stop_at_layer)
        else:
            with self._skip_blocks_before(start):
                out = self.bridge.run_with_hooks(
                    inp, fwd_hooks=all_hooks, start_at_layer=start, stop_at_layer=stop_at_layer
                )
        if stop_at_layer is not None:
            return None  # type: ignore[return-value]
        return out[:, 0]

    def run_edits(
        self,
        start: int,
        resid: torch.Tensor,
        edits: Sequence[Edit],
        k: int,
        stop_at_layer: int | None = None,
        capture: Sequence[tuple[str, int]] = (),
        base: RunCache | None = None,
        shared_prefix: int = 0,
    ) -> tuple[torch.Tensor | None, dict[tuple[str, int], torch.Tensor]]:
        """Run ``k`` stacked copies of the batch from block ``start`` with per-slice edits.

        Args:
            start: first block to run; ``resid`` (n, pos, d_model) is the residual entering it.
            edits: applied in order at their hooks.
            k: number of slices.
            stop_at_layer: stop before this block (then no logits are computed).
            capture: (act, layer) pairs to return, each (k*n, ...).
            base: the cached run ``resid`` comes from; its keys/values serve ``shared_prefix``.
            shared_prefix: the first positions are known to be identical in every slice and in
                ``base`` (the caller's promise: e.g. clean and corrupted tokens agree there and
                every edit's source comes from one of those two runs). They are then taken
                from ``base``'s KV cache instead of being recomputed.

        Returns:
            (metric values (k, n) or None, captured activations).
        """
        by_alias: dict[str, list[Edit]] = {}
        for e in edits:
            if e.layer < start:
                raise HeadscopeError(f"edit at layer {e.layer} precedes the start layer {start}.")
            by_alias.setdefault(hook_alias(e.act, e.layer), []).append(e)
        if capture or stop_at_layer is not None or not self.windows:
            return self._run_full(start, resid, by_alias, k, stop_at_layer, capture)
        prefix = self.usable_prefix(base, shared_prefix)
        logits: torch.Tensor | None = None
        for rows, hi in self.end_groups(prefix, k):
            n_rows = int(rows.shape[0])
            hooks = [
                (alias, self._edit_hook([_window(e, rows, prefix, hi, self.n) for e in lst], k, n_rows))
                for alias, lst in by_alias.items()
            ]
            hooks.append(("unembed.hook_in", gather_positions((self.end[rows] - prefix).repeat(k))))
            device = self.model.device
            inp = resid.to(device)[rows.to(device), prefix:hi].repeat(k, 1, 1)
            cache = _prefix_cache(base, rows, prefix, k) if prefix else None
            with torch.inference_mode(), self._skip_blocks_before(start), quiet_cache_deprecation():
                out = self.bridge.run_with_hooks(inp, fwd_hooks=hooks, start_at_layer=start, past_key_values=cache)
            group_logits = out[:, 0].view(k, n_rows, -1)
            if logits is None:
                logits = group_logits.new_empty(k, self.n, group_logits.shape[-1])
            logits[:, rows.to(logits.device)] = group_logits
        assert logits is not None
        return self.metric(logits.reshape(k * self.n, -1)).view(k, self.n), {}

    # ------------------------------------------------------------------ windows
    def usable_prefix(self, base: RunCache | None, shared_prefix: int) -> int:
        """How many leading positions can come from ``base``'s KV cache (0 without one)."""
        if not shared_prefix or base is None or base.kv is None:
            return 0
        return max(0, min(int(shared_prefix), int(self.end.min()), int(base.kv[0][0].shape[-2])))

    def end_groups(self, prefix: int, k: int) -> list[tuple[torch.Tensor, int]]:
        """Rows grouped by END: ``(row indices, window end)`` pairs covering every row once.

        Each group runs positions ``prefix..hi-1`` with ``hi`` = 1 + its largest END. Groups are
        contiguous runs of sorted END values chosen to minimise ``forwards * overhead +
        k * computed tokens`` (an exact O(m^2) dynamic programme over the m distinct ENDs).
        """
        from headscope.patching.grouping import cheapest_cuts

        ends = self.end.cpu()
        values = sorted(set(ends.tolist()))
        counts = [int((ends == v).sum()) for v in values]
        bounds = cheapest_cuts(counts, lambda i, j, rows: self.forward_overhead_tokens
                               + k * rows * (values[j - 1] + 1 - prefix))
        return [(torch.isin(ends, torch.tensor(values[i:j])).nonzero().flatten(), values[j - 1] + 1) for i, j in bounds]

    def _edit_hook(self, edit_list: list[Edit], k: int, n: int, captured: dict | None = None,
                   cap: tuple[str, int] | None = None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            shaped = x.view(k, n, *x.shape[1:])
            for e in edit_list:
                mask = e.mask.to(x.device).unsqueeze(-1)
                shaped = torch.where(mask, e.source.to(x.device, x.dtype), shaped)
            y = shaped.reshape(x.shape)
            if captured is not None and cap is not None:
                captured[cap] = y.detach().clone()
            return y

        return fn

    def _run_full(
        self,
        start: int,
        resid: torch.Tensor,
        by_alias: dict[str, list[Edit]],
        k: int,
        stop_at_layer: int | None,
        capture: Sequence[tuple[str, int]],
    ) -> tuple[torch.Tensor | None, dict[tuple[str, int], torch.Tensor]]:
        """Full-width forward of ``k`` slices (captures and early stops need every position)."""
        captured: dict[tuple[str, int], torch.Tensor] = {}
        cap_alias = {hook_alias(a, layer): (a, layer) for a, layer in capture}
        hooks = [
            (alias, self._edit_hook(by_alias.get(alias, []), k, self.n, captured, cap_alias.get(alias)))
            for alias in dict.fromkeys([*by_alias, *cap_alias])
        ]
        inp = resid.repeat(k, 1, 1)
        with torch.inference_mode():
            logits = self._run(inp, start, hooks, k=k, stop_at_layer=stop_at_layer)
        if logits is None:
            return None, captured
        return self.metric(logits).view(k, self.n), captured

    def chunks(self, items: Sequence[Any], pos: int, label: str) -> list[list[Any]]:
        """Split ``items`` (one slice each) into chunks that respect the row budget."""
        step = self.slices_per_chunk(pos)
        return [list(items[i : i + step]) for i in range(0, len(items), step)]

    def progress_iter(self, chunks: Sequence[Any], label: str):
        return progress_bar(chunks, label, enabled=self.progress and len(chunks) > 1)


def _window(e: Edit, rows: torch.Tensor, lo: int, hi: int, n: int) -> Edit:
    """``e`` restricted to batch rows ``rows`` and query positions ``lo..hi-1``.

    Masks are (k, n, pos, units) for z/q/k/v and (k, n, heads, q_pos) for pattern; sources
    are left-padded with singleton axes to (k, n, pos, units, d) or (k, n, heads, q_pos,
    k_pos), and an axis is sliced only where it is not broadcast (size 1). A pattern's key
    axis keeps positions ``0..hi-1``: the cached prefix is still attended to.
    """
    pattern = e.act == "pattern"
    mask = e.mask[:, rows] if e.mask.shape[1] == n else e.mask
    mask = mask[..., lo:hi] if pattern else mask[:, :, lo:hi]
    src = e.source
    src = src.reshape((1,) * (e.mask.dim() + 1 - src.dim()) + tuple(src.shape))
    if src.shape[1] == n:
        src = src[:, rows.to(src.device)]
    if pattern:
        if src.shape[3] != 1:
            src = src[:, :, :, lo:hi]
        if src.shape[4] != 1:
            src = src[..., :hi]
    elif src.shape[2] != 1:
        src = src[:, :, lo:hi]
    return Edit(e.act, e.layer, mask, src)


def _prefix_cache(base: RunCache | None, rows: torch.Tensor, prefix: int, k: int) -> Any:
    """A fresh Hugging Face ``DynamicCache`` with ``base``'s keys/values at positions
    ``0..prefix-1`` for ``rows``, repeated for ``k`` slices (every layer, so the cache length
    HF reads from layer 0 is ``prefix``)."""
    from transformers import DynamicCache

    assert base is not None and base.kv is not None
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(base.kv):
        r = rows.to(keys.device)
        cache.update(keys[r, :, :prefix].repeat(k, 1, 1, 1), values[r, :, :prefix].repeat(k, 1, 1, 1), layer)
    return cache


def engine_for(model: Any, batch: Any, max_rows: int | None = None, progress: bool = False) -> PatchEngine:
    """A :class:`PatchEngine` reading a :class:`~headscope.tasks.contrastive.ContrastiveBatch`'s
    END logit difference."""
    return PatchEngine(model, batch.end, batch.logit_diff, max_rows=max_rows, progress=progress)
