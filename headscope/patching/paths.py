"""Path patching (Wang et al. 2022, "Interpretability in the Wild", Appendix B, Algorithm 1).

For a sender head ``s`` and receivers ``R`` (the final residual stream, or the q/k/v inputs of
chosen heads), measured in the *noising* direction on the clean input:

1. Run clean and corrupted inputs; cache every head's z (and the clean residuals).
2. Pass 2 (clean input): the sender's z is set to its corrupted value; **every other attention
   head is frozen to its clean z**; MLPs and LayerNorms are recomputed. The receivers' inputs
   are recorded (for the final residual: the logits of this pass are the result).
3. Pass 3 (clean input): only the receivers' q/k/v are overwritten with the values recorded in
   pass 2; everything downstream is recomputed freely; the metric is read at END.

So only the effect of ``s`` that travels directly into ``R`` (possibly through MLPs, which are
not frozen) is measured. This differs from TransformerLens's ``get_act_patch_direct_path``,
which patches a residual-only direct path with no freezing and no MLP recomputation; the
two are not interchangeable.

Receiver positions: pass 3 overwrites the receivers' inputs at every position (default) or only
at one position per row (``receiver_pos``, e.g. END): Wang et al. patch the name movers' queries
at END only, the position they read the answer from (Sec. 3.1 and App. B).

Score: ``(patched - clean) / (clean - corrupted)`` of the prompt-mean metric: about -1 when the
path carries the whole clean-vs-corrupted difference, 0 when it carries none. Senders at or
after the first receiver layer cannot reach it and get NaN. Under GQA k and v exist per KV
head only, so a k/v receiver is the receiver head's KV head: overwriting it changes every
query head of its group, not the named receiver alone (the result's provenance lists the
query heads affected). Both passes are batched over senders and reuse the cached clean prefix
(see :mod:`headscope.patching.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headscope.errors import HeadscopeError
from headscope.patching.baselines import check_gap, check_layers
from headscope.patching.engine import Edit, PatchEngine, RunCache, shared_prefix
from headscope.patching.heads import head_masks

Head = tuple[int, int]


@dataclass
class Receivers:
    """Where the path ends: ``act`` is ``"resid"`` (final residual) or ``q``/``k``/``v`` of ``heads``."""

    act: str = "resid"
    heads: tuple[Head, ...] = ()

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.heads})

    def describe(self) -> str:
        if self.act == "resid":
            return "resid_final"
        return ",".join(f"{layer}.{h}" for layer, h in self.heads) + f":{self.act}"

    def affected_heads(self, model) -> list[str]:  # noqa: ANN001 - Model
        """The query heads whose input the receivers' overwrite changes (k/v: whole KV groups)."""
        if self.act not in ("k", "v"):
            return [f"{layer}.{h}" for layer, h in self.heads]
        groups = {(layer, model.kv_head(h)) for layer, h in self.heads}
        return [f"{layer}.{h}" for layer, kv in sorted(groups) for h in model.kv_groups()[kv]]


def parse_receivers(model, text: str) -> Receivers:  # noqa: ANN001 - Model
    """``"resid"`` or ``"9.6,9.9:q"`` / ``"1.0:k"`` -> :class:`Receivers`."""
    text = (text or "resid").strip()
    if text in ("resid", "resid_final", "logits"):
        return Receivers()
    if ":" not in text:
        raise HeadscopeError(f"receivers '{text}' should be 'resid' or HEADS:q|k|v, e.g. '9.6,9.9:q'.")
    heads, act = text.rsplit(":", 1)
    if act not in ("q", "k", "v"):
        raise HeadscopeError(f"receiver input must be q, k or v; got '{act}' (e.g. '9.6:q').")
    return Receivers(act, tuple(model.parse_heads(heads)))


@dataclass
class PathPatchResult:
    """values (n_layers, n_heads, n) patched metric per sender (NaN where not applicable);
    clean, corrupted (n,) baselines."""

    values: torch.Tensor
    clean: torch.Tensor
    corrupted: torch.Tensor

    def normalized(self) -> torch.Tensor:
        """(n_layers, n_heads): (patched - clean) / (clean - corrupted)."""
        check_gap(self.clean, self.corrupted)
        c, r = self.clean.mean(), self.corrupted.mean()
        return (self.values.mean(-1) - c) / (c - r)


def _freeze_edits(model, start: int, stop: int, senders: list[int], k: int, n: int, pos: int,  # noqa: ANN001
                  clean: RunCache, corrupted: RunCache) -> list[Edit]:
    """z of every head in layers start..stop-1 := clean, except slice i's sender := corrupted."""
    edits = []
    for layer in range(start, stop):
        all_heads = torch.ones(1, 1, pos, model.n_heads, dtype=torch.bool).expand(k, n, -1, -1)
        edits.append(Edit("z", layer, all_heads, clean.acts[("z", layer)].unsqueeze(0)))
    sender_mask = head_masks("z", [(h, None) for h in senders], n, pos, model.n_heads)
    edits.append(Edit("z", start, sender_mask, corrupted.acts[("z", start)].unsqueeze(0)))
    return edits


def path_patch(
    engine: PatchEngine,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    receivers: Receivers,
    sender_layers: list[int] | None = None,
    receiver_pos: torch.Tensor | None = None,
    senders: list[tuple[int, int]] | None = None,
) -> PathPatchResult:
    """Path-patch every sender head (in ``sender_layers``, default all) into ``receivers``.

    ``receiver_pos`` (n,): overwrite the receivers' inputs only at that position of each row
    (default: every position). Ignored for the final residual.
    """
    model = engine.model
    check_layers(sender_layers, model.n_layers, "sender_layers")
    n, pos = clean_tokens.shape
    clean = engine.cache_run(clean_tokens, acts=("z",))
    corrupted = engine.cache_run(corrupted_tokens, acts=("z",))
    if not torch.equal(clean_tokens, corrupted_tokens):  # a contrastive batch (not self-patching): fail before the sweep
        check_gap(engine.metric(clean.end_logits), engine.metric(corrupted.end_logits))
    last = model.n_layers if receivers.act == "resid" else min(receivers.layers)
    layers = [layer for layer in (sender_layers or range(model.n_layers)) if layer < last]
    values = torch.full((model.n_layers, model.n_heads, n), float("nan"))
    chosen = None if senders is None else {(int(a), int(b)) for a, b in senders}
    units = {layer: [h for h in range(model.n_heads) if chosen is None or (layer, h) in chosen] for layer in layers}
    prefix = shared_prefix(clean_tokens, corrupted_tokens)
    jobs = [(layer, chunk) for layer in layers if units[layer] for chunk in engine.chunks(units[layer], pos, "senders")]
    for layer, chunk in engine.progress_iter(jobs, "path patching"):
        k = len(chunk)
        if receivers.act == "resid":
            edits = _freeze_edits(model, layer, model.n_layers, chunk, k, n, pos, clean, corrupted)
            vals, _ = engine.run_edits(layer, clean.resid_pre[layer], edits, k, base=clean, shared_prefix=prefix)
        else:
            top = max(receivers.layers)
            edits = _freeze_edits(model, layer, top, chunk, k, n, pos, clean, corrupted)
            capture = [(receivers.act, r) for r in receivers.layers]
            stop = top + 1 if top + 1 < model.n_layers else None
            if stop is None:  # run to the end; logits unused
                _, got = engine.run_edits(layer, clean.resid_pre[layer], edits, k, capture=capture)
            else:
                _, got = engine.run_edits(layer, clean.resid_pre[layer], edits, k, stop_at_layer=stop, capture=capture)
            final = []
            for r in receivers.layers:
                heads = [h for rl, h in receivers.heads if rl == r]
                units_r = sorted({model.kv_head(h) for h in heads}) if receivers.act in ("k", "v") else heads
                acts = got[(receivers.act, r)]
                n_units = acts.shape[2]
                mask = torch.zeros(k, n, pos, n_units, dtype=torch.bool)
                if receiver_pos is None:
                    mask[:, :, :, units_r] = True
                else:
                    rows = torch.arange(n).unsqueeze(1)
                    mask[:, rows, receiver_pos.cpu().view(n, 1), torch.tensor(units_r).view(1, -1)] = True
                final.append(Edit(receivers.act, r, mask, acts.view(k, n, *acts.shape[1:])))
            start = min(receivers.layers)
            vals, _ = engine.run_edits(start, clean.resid_pre[start], final, k, base=clean, shared_prefix=prefix)
        for i, h in enumerate(chunk):
            values[layer, h] = vals[i].float().cpu()
    return PathPatchResult(
        values=values,
        clean=engine.metric(clean.end_logits).float().cpu(),
        corrupted=engine.metric(corrupted.end_logits).float().cpu(),
    )
