"""Low-rank view of head composition: which singular directions of a writer a reader reads
(Merullo, Eickhoff & Pavlick 2024, "Talking Heads: Understanding Inter-layer Communication in
Transformer Language Models", arXiv 2406.09519: they decompose the OV matrix of a writer head
(the IOI inhibition heads) by SVD into rank-1 components and compute the composition score of
each component with the reader's QK matrix (the mover head 9.9), their Fig. 2; the composition
score itself is Elhage et al. 2021's ``||W_A W_B||_F / (||W_A||_F ||W_B||_F)``).

Row-vector convention (``x -> x W``), the matrices of :mod:`.composition` (norm-aware, GQA
stacking, rotary ignored). The **writer's** ``OV_A = W_V^{kv(A)} W_O^A P_A`` (d, d), rank
``<= d_head``, is decomposed:

    OV_A = sum_i sigma_i u_i v_i^T,    i = 0 .. d_head - 1, sigma_0 >= sigma_1 >= ...

``u_i`` (what A reads) and ``v_i`` (the residual direction A writes) orthonormal. The reader's
map is ``X = [X_h]_{h in G}`` stacked side by side (q: ``QK_B``; k: ``[QK_h^T]``; v:
``[OV_h]`` over the KV head's query heads ``G``, as in :mod:`.composition`). Per component:

* ``n_i = ||sigma_i u_i v_i^T X||_F = sigma_i ||v_i^T X||`` (``||u_i|| = 1``);
* ``score_i = n_i / (||sigma_i u_i v_i^T||_F ||X||_F) = ||v_i^T X|| / ||X||_F``: the paper's
  composition score of the rank-1 component (sigma cancels: how strongly the reader reads the
  direction ``v_i``, whatever A writes into it);
* ``contribution_i = n_i / (||OV_A||_F ||X||_F) = (sigma_i / ||OV_A||_F) score_i``;
* ``fraction_i = n_i^2 / sum_j n_j^2``.

Identity: ``OV_A X = sum_i u_i (sigma_i v_i^T X)`` with orthonormal ``u_i``, so
``||OV_A X||_F^2 = sum_i n_i^2``: the squared contributions sum to the squared composition score
of the whole edge, ``sum_i contribution_i^2 = CS(OV_A, X)^2`` (the fractions sum to 1), i.e. the
squared edge score is the ``sigma^2``-weighted mean of the squared component scores.

``writer_norm`` (as :mod:`.composition`): ``none`` (default) decomposes ``W_V W_O P_A`` (the
writer's ln1, which acts on what A reads, left out); ``fold`` decomposes TransformerLens's folded
``OV_A = N_A W_V W_O C_w P_A`` (the writer's ln1 ``N_A`` in its W_V, W_O centred on LayerNorm
families: ``fold_ln`` + ``center_writing_weights``), so the write directions ``v_i`` and
singular values are those of ``TransformerBridge.OV`` on a compatibility-mode bridge.

The SVD is computed from the factors, ``Lv = Q1 R1``, ``Ro^T = Q2 R2`` (QR),
``R1 R2^T = U S V^T``: ``u = Q1 U``, ``v = Q2 V`` (exact, d_head x d_head work). Singular vectors
are defined up to sign (the scores are norms) and, where singular values repeat, up to a
rotation within their subspace (then only the subspace's total is meaningful).
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import torch

from headscope.circuits.composition import (
    WRITER_NORM_CHOICES,
    CompositionWeights,
    check_writer_norm,
    composition_scores,
    reader_heads,
)
from headscope.circuits.graph import Edge, EdgeGraph
from headscope.circuits.methods import circuit_mask, register_circuit_method
from headscope.errors import HeadscopeError

SVD_COLUMNS = ("component", "singular_value", "score", "contribution", "fraction", "edge_score")


def writer_svd(lv: torch.Tensor, ro: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``OV = lv @ ro`` from its factors (float64).

    Args:
        lv: (d, dh); ro: (dh, d).

    Returns:
        ``(sigma (dh,), u (d, dh), v (d, dh))`` with ``OV = u diag(sigma) v^T``, sigma descending.
    """
    q1, r1 = torch.linalg.qr(lv.double())
    q2, r2 = torch.linalg.qr(ro.double().T)
    core_u, sigma, core_vh = torch.linalg.svd(r1 @ r2.T)
    return sigma, q1 @ core_u, q2 @ core_vh.T


def edge_components(w: CompositionWeights, edge: Edge, groups: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """Every rank-1 component of the edge's writer, scored against its reader (module docstring).

    Returns:
        ``{"singular_value", "score", "contribution", "fraction": (dh,), "edge_score": ()}``
        in SVD order (component i = i-th largest singular value); NaN where a side is zero.
    """
    s, r = edge.sender, edge.receiver
    sigma, _, v = writer_svd(*w.writer(s.layer, s.unit))
    maps = w.reader(r.layer, reader_heads(r, groups), r.input)
    read_sq = sum((((v.T @ left.double()) @ right.double()) ** 2).sum(-1) for left, right in maps)  # ||v_i^T X||^2
    x_sq = sum(((left.double() @ right.double()) ** 2).sum() for left, right in maps)  # ||X||_F^2
    n_sq = sigma**2 * read_sq
    ov_sq, total = (sigma**2).sum(), n_sq.sum()
    nan = torch.full_like(sigma, float("nan"))
    ok = bool(x_sq > 0 and ov_sq > 0)
    return {
        "singular_value": sigma.float(),
        "score": (read_sq / x_sq).sqrt().float() if ok else nan.float(),
        "contribution": (n_sq / (ov_sq * x_sq)).sqrt().float() if ok else nan.float(),
        "fraction": (n_sq / total).float() if ok and total > 0 else nan.float(),
        "edge_score": (total / (ov_sq * x_sq)).sqrt().float() if ok else torch.tensor(float("nan")),
    }


def _top(parts: dict[str, torch.Tensor], rank: int | None) -> torch.Tensor:
    """Component indices by decreasing fraction (SVD order on ties / NaN), the first ``rank``."""
    order = parts["fraction"].nan_to_num(nan=-1.0).argsort(descending=True, stable=True)
    return order if rank is None else order[:rank]


def composition_svd(model: Any, writer: str, reader: str, kind: str, rank: int | None = None,
                    weights: CompositionWeights | None = None, writer_norm: str = "none") -> pd.DataFrame:
    """Rank-1 components of ``writer``'s OV and how much ``reader`` reads each (module docstring).

    Args:
        model: a :class:`headscope.models.Model`.
        writer: the writer head, ``a{l}.h{h}``.
        reader: ``a{l}.h{h}`` for ``kind="q"``; the KV head (``a{l}.kv{g}``, or ``a{l}.h{g}``
            without GQA) for ``k`` / ``v``.
        kind: ``q``, ``k`` or ``v`` (Q-, K-, V-composition).
        rank: keep the ``rank`` components with the largest ``fraction`` (None: all d_head).
        weights: precomputed :class:`CompositionWeights` (reused across calls; it fixes the
            convention, ``writer_norm`` is then ignored).
        writer_norm: ``none`` or ``fold`` (module docstring), for the weights built here.

    Returns:
        One row per component, by decreasing fraction: ``writer, reader, kind, component`` (SVD
        index, 0 = largest singular value), ``singular_value, score, contribution, fraction,
        edge_score`` (the edge's full composition score, as ``method composition``).
    """
    if kind not in ("q", "k", "v"):
        raise HeadscopeError(f"kind must be q, k or v (the reader's query, key or value input); got '{kind}'.")
    if rank is not None and rank < 1:
        raise HeadscopeError(f"rank must be at least 1 (components to keep) or None for all; got {rank}.")
    edge = EdgeGraph.of(model).edge(writer, reader, kind)
    if edge.sender.kind != "head" or edge.receiver.kind != "head":
        raise HeadscopeError(f"composition is between attention heads: writer a<L>.h<H>, reader a<L>.h<H> or a<L>.kv<G>; got {writer} -> {reader}.")
    parts = edge_components(weights or CompositionWeights(model, check_writer_norm(writer_norm)), edge, model.kv_groups())
    keep = _top(parts, rank)
    return pd.DataFrame({
        "writer": writer, "reader": reader, "kind": kind, "component": keep.tolist(),
        **{k: parts[k][keep].tolist() for k in SVD_COLUMNS[1:-1]},
        "edge_score": float(parts["edge_score"]),
    })


@register_circuit_method("composition_svd", "top composition edges split into the writer's rank-1 SVD components (Merullo et al. 2024)",
                         requires=())
def composition_svd_method(model: Any, task: Any, top_edges: int = 10, rank: int = 3, threshold: float | None = None,
                           writer_norm: Literal["none", "fold"] = "none") -> Any:
    """The ``top_edges`` head-to-head edges by composition score (``method composition``), each
    split into its writer's ``rank`` rank-1 SVD components that explain most of it; the task is
    not run.

    One row per (edge, component), ordered by edge score then fraction: ``score`` is the
    component's composition score (Merullo et al.), extra columns ``component`` (SVD index),
    ``singular_value, contribution, fraction, edge_score`` (module docstring). ``circuit`` is
    True on every row (every row belongs to a top edge).

    Args:
        top_edges, threshold: which edges (as the circuit flag of ``composition``).
        rank: components kept per edge (largest fraction first).
        writer_norm: ``none`` (default): the writer's own ln1 left out of the decomposed OV (it
            acts on what the writer reads, not on the path to the reader); ``fold``:
            TransformerLens's folded weights (module docstring), for both the edge ranking and
            the decomposed OV.
    """
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    if rank < 1:
        raise HeadscopeError(f"rank must be at least 1 (components per edge); got {rank}.")
    check_writer_norm(writer_norm)
    graph = EdgeGraph.of(model)
    edges, scores = composition_scores(model, graph, writer_norm)
    chosen = circuit_mask(scores, top_edges, threshold)
    order = [i for i in scores.nan_to_num(nan=-1.0).argsort(descending=True, stable=True).tolist() if chosen[i]]
    w, groups = CompositionWeights(model, writer_norm), model.kv_groups()
    rows: list[Edge] = []
    cols: dict[str, list[float]] = {k: [] for k in SVD_COLUMNS}
    for i in order:
        parts = edge_components(w, edges[i], groups)
        keep = _top(parts, rank)
        rows += [edges[i]] * len(keep)
        cols["component"] += keep.tolist()
        for k in SVD_COLUMNS[1:-1]:
            cols[k] += parts[k][keep].tolist()
        cols["edge_score"] += [float(parts["edge_score"])] * len(keep)
    info = task.describe() if hasattr(task, "describe") else {"name": str(task)}
    prov = build_provenance(model, task=info, analyzer="circuit:composition_svd",
                            options={"top_edges": top_edges, "rank": rank, "threshold": threshold, "writer_norm": writer_norm},
                            choices={"score": "composition score of the writer's rank-1 SVD component sigma_i u_i v_i^T with the reader's map "
                                              "(Merullo et al. 2024, Fig. 2): ||v_i^T X|| / ||X||_F; matrices as method composition",
                                     "identity": "sum over all components of contribution^2 = edge_score^2 (fractions sum to 1)",
                                     "gqa": "k/v receivers are KV heads: the group's query heads' maps stacked, never split",
                                     "writer_norm": WRITER_NORM_CHOICES[writer_norm]})
    score = cols.pop("score")
    return EdgeScores.from_edges(rows, score, [True] * len(rows), model=model.spec, task=getattr(task, "name", str(task)),
                                 method="composition_svd", extra=cols, provenance=prov)
