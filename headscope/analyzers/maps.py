"""MAPS: parameter-only relation scores of heads (Elhelo & Geva 2024, "Inferring Functionality
of Attention Heads from their Parameters").

Each head's effective vocab-to-vocab map is ``M_h = E W_OV^h W_U`` (rows: source tokens,
columns: output tokens), with ``E`` an effective embedding (:mod:`headscope.lens.ov_circuit`,
which also handles the GQA mapping of ``W_V`` and the norms). For a relation given as
(source, target) pairs (:mod:`headscope.tasks.relations`) the head's ``maps`` score is the
fraction of pairs whose target is in the top ``top_k`` of row ``M_h[source]`` over the whole
vocabulary (ties count against the target); ``maps_suppression`` is the same for ``-M_h`` (the
paper's suppression score: the target among the most *suppressed* tokens); ``maps_rank1`` uses
``top_k = 1``.

The ``paper`` preset follows the authors' reference code (``src/maps.py``, ``MAPS`` class,
read, not copied): ``calc_relation_scores`` projects raw ``W_E`` rows for layer-0 heads and
``MLP0(ln2(W_E))`` (the first MLP's output alone) for every later head (``embedding="maps"``);
``ov_project`` multiplies by ``W_VO`` and ``W_U`` from a TransformerLens ``HookedTransformer``
state dict with default weight processing, i.e. the norms' weights folded into ``W_V`` and
``W_U`` and writing weights centred, with no normalisation of the embedding (``ln="fold"``);
``calc_relation_score`` takes ``torch.topk`` of the row (``suppression``: of its negation);
``k`` is 1 for copying relations and 10 otherwise (the commented ``get_k`` in the experiment
scripts, the values of the paper's Sec. 3; ``top_k=None``). Tokenization there is a leading
space only; headscope also tries the bare word when the spaced form is not one token.

headscope's default departs from the preset: ``embedding="embed_mlp0"`` (``E[t] + MLP0(E[t])``,
the residual a later head actually reads, the recipe of headscope's OV test ``ov_copying``),
``ln=True`` (the real norms as in the forward pass, the head's ``ln1`` normalising its input)
and ``top_k=10`` for every relation. On SmolLM2-135M the embeddings disagree for copying:
``embed_mlp0`` ranks 23.0, 23.2, 24.5 first (the OV test's top heads), ``embed`` ranks 27.3,
5.1, 29.1 first. Biases are excluded; multi-token pairs are skipped and counted.

:func:`salient_mappings` gives each head's "salient operation" summary: its strongest token
mappings (source -> target) among a set of source tokens, as a tidy frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.ov_circuit import check_ln, effective_embedding, iter_ov_logits
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import RelationPairsTask


def relation_fraction(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> tuple[float, float]:
    """(fraction of rows whose target is in the top-k, fraction where it is top-1).

    Args:
        logits: (n_pairs, d_vocab), row i for pair i's source.
        targets: (n_pairs,) target ids.
    """
    own = logits.gather(1, targets.unsqueeze(1))
    rank = (logits >= own).sum(1) - 1
    return float((rank < top_k).float().mean()), float((rank < 1).float().mean())


MAPS_EMBEDDINGS: tuple[str, ...] = ("maps", "embed_mlp0", "embed", "mlp0")


def paper_k(task: Any) -> int:
    """The reference's ``k``: 1 for a copying relation, 10 otherwise."""
    return 1 if getattr(task, "relation", None) == "copying" and not getattr(task, "path", None) else 10


def head_inputs(model: Any, ids: torch.Tensor, embedding: str, ln: bool | str) -> dict[str, tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Effective embeddings and the heads that read them: ``{name: (emb, heads)}``.

    ``embedding="maps"`` gives layer-0 heads the raw ``W_E`` rows and later heads
    ``MLP0(ln2(W_E))``; every other recipe gives all heads the same embedding.
    """
    every = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    if embedding != "maps":
        return {embedding: (effective_embedding(model, ids, embedding, bool(ln)), every)}
    bridge = model.bridge
    raw = bridge.W_E.detach()[ids.to(bridge.W_E.device)]
    block0 = bridge.blocks[0]
    with torch.inference_mode():  # the first MLP on ln2(W_E), no post-MLP norm (the reference's first_mlp)
        x = block0.ln2(raw.unsqueeze(0)) if "ln2" in dict(block0.named_children()) else raw.unsqueeze(0)
        mlp0 = block0.mlp(x)[0]
    return {
        "raw W_E": (raw, [hd for hd in every if hd[0] == 0]),
        "MLP0(ln2(W_E))": (mlp0, [hd for hd in every if hd[0] > 0]),
    }


@register_analyzer(
    "maps",
    summary="MAPS (Elhelo & Geva 2024): fraction of relation pairs whose target is in the top-k of the head's vocab map",
    requires=RelationPairsTask,
    presets={"paper": {"embedding": "maps", "ln": "fold", "top_k": None}},
)
def maps(
    model: Any,
    task: Any,
    top_k: int | None = 10,
    embedding: str = "embed_mlp0",
    ln: bool | str = True,
    progress: bool = False,
) -> HeadScores:
    """MAPS relation and suppression scores of every head.

    Args:
        top_k: a pair counts when its target is in the top ``top_k`` of the source's row;
            ``None``: the reference's rule (1 for copying, 10 otherwise).
        embedding: ``embed_mlp0`` (default), ``maps`` (the reference's: raw ``W_E`` for layer 0,
            ``MLP0(ln2(W_E))`` after), ``embed`` or ``mlp0``.
        ln: ``True`` (real norms), ``"fold"`` (norm weights folded, as the reference's
            TransformerLens weights) or ``False`` (see ``ov_circuit``).
        progress: unused; accepted for the CLI.

    Returns:
        HeadScores with metrics ``maps``, ``maps_suppression`` and ``maps_rank1``; ``n`` = pairs kept.
    """
    k = paper_k(task) if top_k is None else int(top_k)
    if k < 1:
        raise HeadscopeError("top_k must be at least 1: e.g. -o top_k=10.")
    if embedding not in MAPS_EMBEDDINGS:
        from headscope.errors import suggest

        raise HeadscopeError(f"unknown embedding '{embedding}'.{suggest(embedding, MAPS_EMBEDDINGS)} Choose from {', '.join(MAPS_EMBEDDINGS)}.")
    check_ln(ln)
    src, tgt, skipped = task.pairs(model)
    tgt_t = torch.tensor(tgt)
    shape = (model.n_layers, model.n_heads)
    topk, supp, top1 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for emb, heads in head_inputs(model, torch.tensor(src), embedding, ln).values():
        for layer, head, logits in iter_ov_logits(model, emb, None, ln, heads=heads):
            target = tgt_t.to(logits.device)
            topk[layer, head], top1[layer, head] = relation_fraction(logits, target, k)
            supp[layer, head] = relation_fraction(-logits, target, k)[0]
    kv = model.kv_head_matrix()
    common = {"model": model.spec, "task": task.name, "analyzer": "maps"}
    extra = {"n": len(src), "kv_head": kv}
    prov = build_provenance(
        model, task=task.describe(), analyzer="maps",
        options={"top_k": top_k, "embedding": embedding, "ln": ln},
        choices={
            "effective_embedding": embedding,
            "ln": {True: "head's ln1 before W_V, final norm's linear part before W_U",
                   "fold": "norm weights folded into W_V and W_U (TransformerLens processed weights), no normalisation",
                   False: "no norms"}[ln],
            "top_k": k,
            "ranking": f"target among the top {k} of the full-vocabulary row (ties count against it); suppression: of the negated row",
            "tokenization": "leading-space form first, then bare; multi-token pairs skipped",
            "pairs_kept": len(src), "pairs_skipped": skipped,
            "gqa": "query head h uses W_V of KV head h // group_size", "biases": "excluded",
        },
    )
    return HeadScores.concat(
        [HeadScores.from_matrix(topk, metric="maps", extra=extra, **common),
         HeadScores.from_matrix(supp, metric="maps_suppression", extra=extra, **common),
         HeadScores.from_matrix(top1, metric="maps_rank1", extra=extra, **common)],
        provenance=prov,
    )


def salient_mappings(
    model: Any,
    heads: Sequence[tuple[int, int]],
    source_ids: Sequence[int],
    n: int = 10,
    embedding: str = "embed_mlp0",
    ln: bool = True,
) -> pd.DataFrame:
    """Each head's strongest token mappings ("salient operations", MAPS Sec. 4).

    For every source token the row ``M_h[source]`` is standardised over the vocabulary
    (z-score), its top target is taken, and the ``n`` (source, target) pairs with the highest
    z-scores are kept.

    Returns:
        Tidy frame: layer, head, rank, source, target, source_id, target_id, zscore.
    """
    ids = torch.tensor(list(source_ids))
    emb = effective_embedding(model, ids, embedding, ln)
    dec = model.tokenizer.decode
    rows: list[dict[str, Any]] = []
    for layer, head, logits in iter_ov_logits(model, emb, None, ln, heads=list(heads)):
        z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True).clamp_min(1e-12)
        best, tgt = z.max(1)
        order = best.argsort(descending=True)[:n]
        for rank, i in enumerate(order.tolist()):
            rows.append({"layer": layer, "head": head, "rank": rank, "source": dec([int(ids[i])]),
                         "target": dec([int(tgt[i])]), "source_id": int(ids[i]), "target_id": int(tgt[i]),
                         "zscore": float(best[i])})
    return pd.DataFrame(rows)
