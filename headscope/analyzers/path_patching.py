"""Path patching per sender head (Wang et al. 2022, App. B, Algorithm 1) — see
:mod:`headscope.patching.paths` for the algorithm, the score and how it differs from
TransformerLens's residual-only direct-path patch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.patching.engine import engine_for
from headscope.patching.paths import parse_receivers, path_patch
from headscope.results import HeadScores, build_provenance
from headscope.scale.spec import by_head
from headscope.tasks.contrastive import contrastive_batch
from headscope.tasks.protocols import ContrastiveTask


def sender_units(model: Any, task: Any, options: dict[str, Any]) -> list[tuple[int, int]]:
    """Every sender head of a run: heads of ``sender_layers`` (default all) before the first
    receiver layer (all layers for ``resid``), or the ``senders`` given."""
    if options.get("senders"):
        return model.parse_heads(options["senders"])
    rec = parse_receivers(model, options.get("receivers", "resid"))
    last = model.n_layers if rec.act == "resid" else min(rec.layers)
    layers = options.get("sender_layers") or range(model.n_layers)
    return [(layer, h) for layer in sorted(set(layers)) if layer < last for h in range(model.n_heads)]


@register_analyzer(
    "path_patching",
    summary="Wang et al. path patching: sender heads -> final residual or receivers' q/k/v (others frozen)",
    requires=ContrastiveTask,
    presets={"paper": {"receiver_positions": "END"}},
    shard=by_head(sender_units, option="senders", clears=("sender_layers",), unit="sender head"),
)
def path_patching(
    model: Any,
    task: Any,
    receivers: str = "resid",
    receiver_positions: str = "all",
    sender_layers: list[int] | None = None,
    senders: str | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> HeadScores:
    """Score every sender head by the effect of its path into ``receivers``.

    Args:
        model: a loaded :class:`headscope.models.Model`.
        task: a contrastive task.
        receivers: ``resid`` (final residual stream) or ``HEADS:q|k|v`` (e.g. ``9.6,9.9:q``).
        receiver_positions: ``all`` (default) or a named position of the task (``END``, the
            paper preset: Wang et al. patch the name movers' queries at END only) where the
            receivers' inputs are overwritten.
        sender_layers: restrict senders to these layers (default all before the receivers).
        senders: only these sender heads (``"L.H,..."``; others NaN), e.g. one shard's.
        max_rows: rows per batched forward.
        progress: progress bar.

    Returns:
        HeadScores with metric ``path_patch`` (``(patched - clean) / (clean - corrupted)``,
        -1 = the path carries the whole effect), NaN for senders that cannot reach the receivers.
    """
    batch = contrastive_batch(model, task)
    rec = parse_receivers(model, receivers)
    if receiver_positions == "all":
        where = None
    elif receiver_positions in batch.positions:
        where = batch.positions[receiver_positions]
    else:
        from headscope.errors import HeadscopeError, suggest

        names = ["all", *batch.positions]
        raise HeadscopeError(
            f"unknown receiver position '{receiver_positions}'.{suggest(receiver_positions, names)} "
            f"Choose from {', '.join(names)}."
        )
    engine = engine_for(model, batch, max_rows=max_rows, progress=progress)
    with torch.inference_mode():
        result = path_patch(engine, batch.clean, batch.corrupted, rec, sender_layers=sender_layers, receiver_pos=where,
                            senders=model.parse_heads(senders) if senders else None)
    n = result.values.shape[-1]
    denom = float(result.clean.mean() - result.corrupted.mean())
    stderr = ((result.values - result.clean).std(-1, unbiased=True) / np.sqrt(n) / abs(denom)).numpy() if n > 1 else 0.0
    info = task.describe()
    provenance = build_provenance(
        model, task=info, analyzer="path_patching",
        options={"receivers": receivers, "receiver_positions": receiver_positions, "sender_layers": sender_layers,
                 "senders": senders, "max_rows": max_rows},
        choices={
            "algorithm": "Wang et al. 2022 App. B Alg. 1: sender := corrupted, all other heads frozen to clean, "
            "MLPs and LayerNorms recomputed, receivers overwritten in a final pass (not TransformerLens's "
            "residual-only direct-path patch)",
            "direction": "noising: corrupted sender activation in the clean run",
            "normalisation": "(patched - clean) / (clean - corrupted) of the prompt-mean metric",
            "receivers": rec.describe(),
            "receiver_positions": "every position" if where is None else f"{receiver_positions} of each row",
            "gqa_kv": "k/v exist per KV head: a k/v receiver overwrites its whole KV group" if rec.act in ("k", "v") else None,
            "receiver_query_heads_affected": rec.affected_heads(model) if rec.act != "resid" else None,
            "clean_metric": float(result.clean.mean()),
            "corrupted_metric": float(result.corrupted.mean()),
        },
        seed=info.get("seed"),
    )
    kv = model.kv_head_matrix()
    return HeadScores.from_matrix(
        result.normalized().numpy(), model=model.spec, task=task.name, analyzer="path_patching",
        metric="path_patch", extra={"stderr": stderr, "n": n, "kv_head": kv, "position": "all"},
        provenance=provenance,
    )
