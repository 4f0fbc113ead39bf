"""How the ``exact`` circuit method splits into shards (``--shard I/N``, torchrun ranks): receiver blocks.

Unit: a **receiver block**, the block every edge into which a shard patches: block ``l``
(0 <= l < n_layers: the q/k/v inputs of its heads and its MLP input) or ``n_layers`` (the
logits). A shard runs ``exact`` with ``receiver_layers`` set to its blocks.

Why blocks and not single edges: :func:`headscope.circuits.exact.exact_edge_effects` computes
the q/k/v inputs of a block once per sender, for all of that block's head receivers together
(one single-block forward per sender), and batches edges into one patched forward from their
block on. Edges of one block in one shard keep both: no shard recomputes another's q/k/v
inputs, and each shard's forwards start at its own blocks. The price is at most
``n_layers + 1`` shards. A block's cost grows with its senders (about ``l`` layers' worth) and
the blocks its patched runs cross (``n_layers - l``); round-robin assignment
(:meth:`headscope.scale.shard.Shard.take`) spreads the expensive middle blocks over shards.

Merging: each part holds only its receiver blocks' edges and records where they sit in the full
table (:mod:`headscope.scale.merge`), so the merge puts every row back in place; then the circuit flag,
which ranks all edges together (``top_edges`` / ``threshold``), is recomputed on the merged
scores, so it equals the one-process run's.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.scale.spec import ShardSpec, Unit


def _blocks(model: Any, task: Any, options: dict[str, Any]) -> list[Unit]:
    chosen = options.get("receiver_layers")
    return sorted({int(x) for x in chosen}) if chosen is not None else list(range(model.n_layers + 1))


def merge_exact_parts(parts: list[Any]) -> Any:
    """The parts' rows by receiver block, and the circuit flag recomputed on all merged scores.

    Args:
        parts: EdgeScores of shards ``0..N-1`` of one ``exact`` run, in shard order (checked by
            :func:`headscope.scale.merge.check_parts`).
    """
    from headscope.circuits.methods import circuit_mask
    from headscope.scale.merge import EDGE_IDENTITY_COLUMNS, merge_by_rows

    merged = merge_by_rows(parts, EXACT_SHARDS, identity=EDGE_IDENTITY_COLUMNS)
    prov = dict(parts[0].provenance)
    options = prov.get("options") or {}
    scores = torch.tensor(merged["score"].to_numpy(dtype="float64"), dtype=torch.float64)
    circuit = circuit_mask(scores, int(options.get("top_edges", 100)), options.get("threshold"))
    merged["circuit"] = circuit.numpy()
    prov["choices"] = {**dict(prov.get("choices") or {}), "circuit_edges": int(circuit.sum())}
    merged.provenance = prov
    return merged


EXACT_SHARDS = ShardSpec(
    unit="receiver block",
    options=("receiver_layers",),
    units=_blocks,
    restrict=lambda mine: {"receiver_layers": [int(u) for u in mine]},  # type: ignore[arg-type]
    row_units=lambda frame: [int(x) for x in frame["receiver_layer"]],
    merge=merge_exact_parts,
)
"""The :class:`ShardSpec` of the ``exact`` circuit method (see the module docstring)."""
