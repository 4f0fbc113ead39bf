"""The model with a set of edges removed, recomputed from raw Hugging Face runs (module hooks only).

ACDC's semantics (Conmy et al. 2023, Sec. 2; ``ArthurConmy/Automatic-Circuit-Discovery``,
``acdc/TLACDCExperiment.py``: a removed edge's receiver reads the sender's output from the
corrupted cache): every receiver input reads the *current* residual (the run being computed) plus,
for each removed edge ``s -> input``, ``corrupted output of s - current output of s``. No
headscope and no TransformerLens: the run is built by repeating the raw forward of
:class:`.raw_hf.RawHF` with the edits found so far, one stage at a time, in residual order:

* stage ``(layer, attention)``: the q/k/v of every receiver unit of ``layer`` with removed edges
  is the projection output of the layer run on its own edited residual (a forward pre-hook
  replacing the layer's input, as in :func:`.raw_edges.edge_logits`), written into the later
  forwards (``RawHF.run(proj_edit=...)``);
* stage ``(layer, MLP)``: the delta of the MLP's removed edges is added to the input of the norm
  before the MLP (forward pre-hook);
* the logits: the delta of their removed edges is added to the final norm's input.

Each stage reads the senders' current outputs from a forward that already carries every edit
upstream of it: the embedding (``input``), ``z_h @ W_O^h`` of each head through the output
projection module (:meth:`.raw_hf.RawHF.head_out`, linear in z) and the MLP's output. Families
with post-attention/post-MLP norms are not covered (a head's output is then not linear in its z).
"""

from __future__ import annotations

from typing import Any

import torch

from .raw_edges import _replace_input
from .raw_hf import RawHF, RawRun

Removed = set[tuple[str, str, str, int, int]]
"""Removed edges as (sender name, receiver kind, receiver input, receiver layer, receiver unit)."""


def _sender_out(raw: RawHF, run: RawRun, name: str) -> torch.Tensor:
    """What sender ``name`` (``input``, ``a{l}.h{h}``, ``m{l}``) adds to the residual in ``run``, (b, p, d)."""
    if name == "input":
        return run.emb
    if name.startswith("m"):
        return run.mlp_add[int(name[1:])]
    layer, head = (int(t) for t in name[1:].split(".h"))
    return raw.head_out(layer, run.z[layer])[:, :, head]


class RawGraph:
    """Patched-graph forwards of one raw model on one (clean, corrupted) batch."""

    def __init__(self, raw: RawHF, clean: torch.Tensor, corrupted: torch.Tensor) -> None:
        assert not raw.post_norms, "raw_graph covers families whose head outputs are linear in z"
        self.raw, self.clean = raw, clean
        self.corrupted_run = raw.run(corrupted)

    def _delta(self, run: RawRun, senders: list[str]) -> torch.Tensor:
        """(b, p, d) sum over ``senders`` of (corrupted output - output in ``run``)."""
        x = self.corrupted_run
        return sum((_sender_out(self.raw, x, s) - _sender_out(self.raw, run, s) for s in senders),
                   torch.zeros_like(run.emb))

    def _forward(self, qkv: dict[tuple[str, int], dict[int, torch.Tensor]], mlp: dict[int, torch.Tensor],
                 final: torch.Tensor | None) -> tuple[RawRun, dict[int, torch.Tensor]]:
        """The clean forward with the edits so far; also the residual entering each layer."""
        raw, resid, handles = self.raw, {}, []

        def writer(units: dict[int, torch.Tensor]):  # noqa: ANN202
            def fn(x: torch.Tensor) -> torch.Tensor:
                for u, new in units.items():
                    x[:, :, u] = new
                return x

            return fn

        for layer in range(raw.n_layers):
            def keep(x: torch.Tensor, layer: int = layer) -> torch.Tensor:
                resid[layer] = x.detach().clone()
                return x

            handles.append(raw.layers[layer].register_forward_pre_hook(_replace_input(keep), with_kwargs=True))
            if layer in mlp:
                module: Any = raw.pre_mlp_norm(layer)
                handles.append(module.register_forward_pre_hook(
                    _replace_input(lambda x, d=mlp[layer]: x + d), with_kwargs=True))
        if final is not None:
            handles.append(raw.final_norm.register_forward_pre_hook(_replace_input(lambda x: x + final), with_kwargs=True))
        try:
            run = raw.run(self.clean, proj_edit={key: writer(units) for key, units in qkv.items()})
        finally:
            for h in handles:
                h.remove()
        return run, resid

    def _projection(self, layer: int, act: str, edited: torch.Tensor) -> torch.Tensor:
        """The ``act`` projection output of ``layer`` on the residual ``edited``: (b, p, units, d)."""
        handle = self.raw.layers[layer].register_forward_pre_hook(_replace_input(lambda x: edited), with_kwargs=True)
        try:
            return getattr(self.raw.run(self.clean), act)[layer]
        finally:
            handle.remove()

    @torch.inference_mode()
    def logits(self, removed: Removed) -> torch.Tensor:
        """(b, p, vocab) logits of the clean run with the edges in ``removed`` patched to corrupted."""
        into: dict[tuple[str, str, int, int], list[str]] = {}
        for sender, kind, act, layer, unit in removed:
            into.setdefault((kind, act, layer, unit), []).append(sender)
        qkv: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
        mlp: dict[int, torch.Tensor] = {}
        for layer in range(self.raw.n_layers):
            heads = [(act, unit, s) for (kind, act, lay, unit), s in into.items() if kind == "head" and lay == layer]
            if heads:
                run, resid = self._forward(qkv, mlp, None)
                for act, unit, senders in heads:
                    new = self._projection(layer, act, resid[layer] + self._delta(run, senders))
                    qkv.setdefault((act, layer), {})[unit] = new[:, :, unit]
            senders = into.get(("mlp", "in", layer, -1))
            if senders:
                run, _ = self._forward(qkv, mlp, None)
                mlp[layer] = self._delta(run, senders)
        final = None
        senders = into.get(("logits", "in", self.raw.n_layers, -1))
        if senders:
            run, _ = self._forward(qkv, mlp, None)
            final = self._delta(run, senders)
        return self._forward(qkv, mlp, final)[0].logits
