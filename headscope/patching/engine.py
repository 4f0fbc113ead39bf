"""The patching engine: exact per-head patching as a few batched, truncated forwards.

Exact activation patching of every head (Meng et al. 2022; Wang et al. 2022) is usually run as
one forward pass per head (TransformerLens ``patching.get_act_patch_attn_head_out_all_pos``:
``n_layers * n_heads`` passes). The engine computes the same numbers with three savings:

1. **Batching.** The prompt batch (n rows) is replicated ``k`` times and slice ``i`` gets its
   own edit (a different head, position or sender), so one forward serves ``k`` patches.
   Each edit is a boolean mask over the activation (slice, row, position, head) and a source
   tensor; the hook applies ``torch.where(mask, source, act)``.
2. **Prefix reuse.** An edit at layer ``l`` leaves the residual entering layer ``l``
   unchanged, so the engine caches ``resid_pre`` of the base run at every layer and reruns only
   blocks ``l..L-1``. TransformerBridge's own ``start_at_layer`` swaps the residual in at block
   ``l`` but still executes blocks ``0..l-1`` (see its docstring), so it saves no compute; the
   engine therefore also hands the HF model a truncated ``ModuleList`` of blocks ``l..L-1``
   for the duration of the call (the bridge then injects the cached residual into block
   ``l``; rotary embeddings and the causal mask are computed by HF exactly as in a full run,
   from absolute positions ``0..pos-1``).
3. **Cheap unembedding.** A hook on ``unembed.hook_in`` keeps only each row's metric
   position, so the final norm and ``W_U`` run on ``rows`` vectors instead of
   ``rows * pos`` (RMSNorm/LayerNorm act per position, so this is exact up to matmul
   blocking, ~1e-5 in float32).

Chunks are bounded by ``max_rows`` (rows per forward) for memory; a progress bar reports them.

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
from headscope.progress import progress_bar

ACT_HOOKS = {
    "z": "blocks.{l}.attn.hook_z",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "pattern": "blocks.{l}.attn.hook_pattern",
}
PATCH_ACTS = tuple(ACT_HOOKS)


def hook_alias(act: str, layer: int) -> str:
    """Bridge hook alias for a patchable activation (``resid_pre`` included)."""
    if act == "resid_pre":
        return f"blocks.{layer}.hook_resid_pre"
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
    """What a cached base run holds: per-layer residuals and activations, and END logits."""

    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)
    acts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    end_logits: torch.Tensor | None = None


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
            out.end_logits = self._run(tokens.to(self.model.device), 0, hooks, k=1, from_tokens=True)
        return out

    # ------------------------------------------------------------------ core forward
    @contextmanager
    def _truncated(self, start: int):
        if not self.prefix_reuse or start == 0 or self._layers is None:
            yield
            return
        owner, name, full = self._layers
        setattr(owner, name, nn.ModuleList(list(full)[start:]))
        try:
            yield
        finally:
            setattr(owner, name, full)

    def _gather_hook(self, k: int, pos_len: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        end = self.end.repeat(k)

        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            rows = torch.arange(x.shape[0], device=x.device)
            return x[rows, end.to(x.device)].unsqueeze(1)

        return fn

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
        pos_len = int(inp.shape[1])
        all_hooks = list(hooks)
        if stop_at_layer is None:
            all_hooks.append(("unembed.hook_in", self._gather_hook(k, pos_len)))
        if from_tokens:
            out = self.bridge.run_with_hooks(inp, fwd_hooks=all_hooks, stop_at_layer=stop_at_layer)
        else:
            with self._truncated(start):
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
    ) -> tuple[torch.Tensor | None, dict[tuple[str, int], torch.Tensor]]:
        """Run ``k`` stacked copies of the batch from block ``start`` with per-slice edits.

        Args:
            start: first block to run; ``resid`` (n, pos, d_model) is the residual entering it.
            edits: applied in order at their hooks.
            k: number of slices.
            stop_at_layer: stop before this block (then no logits are computed).
            capture: (act, layer) pairs to return, each (k*n, ...).

        Returns:
            (metric values (k, n) or None, captured activations).
        """
        by_alias: dict[str, list[Edit]] = {}
        for e in edits:
            if e.layer < start:
                raise HeadscopeError(f"edit at layer {e.layer} precedes the start layer {start}.")
            by_alias.setdefault(hook_alias(e.act, e.layer), []).append(e)
        captured: dict[tuple[str, int], torch.Tensor] = {}

        def make(alias: str, edit_list: list[Edit], cap: tuple[str, int] | None):
            def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
                shaped = x.view(k, self.n, *x.shape[1:])
                for e in edit_list:
                    mask = e.mask.to(x.device).unsqueeze(-1)
                    shaped = torch.where(mask, e.source.to(x.device, x.dtype), shaped)
                y = shaped.reshape(x.shape)
                if cap is not None:
                    captured[cap] = y.detach().clone()
                return y

            return fn

        hooks = []
        cap_alias = {hook_alias(a, layer): (a, layer) for a, layer in capture}
        for alias in dict.fromkeys([*by_alias, *cap_alias]):
            hooks.append((alias, make(alias, by_alias.get(alias, []), cap_alias.get(alias))))
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
