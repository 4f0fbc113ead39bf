"""Head composition scores from the weights (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits", Sec. "Composition"), GQA-correct and norm-aware.

For an earlier head A and a later head B (row-vector convention, ``x -> x W``):

* Q-composition ``||OV_A QK_B||_F / (||OV_A||_F ||QK_B||_F)``;
* K-composition ``||OV_A QK_B^T||_F / (||OV_A||_F ||QK_B||_F)``;
* V-composition ``||OV_A OV_B||_F / (||OV_A||_F ||OV_B||_F)``;

as TransformerLens's ``HookedTransformer.all_composition_scores`` (``left = OV``, ``right =
QK``, ``QK.T`` or ``OV``; ``utils.composition_scores``). The matrices include what lies between
them in the model:

* ``OV_A = W_V^{kv(A)} W_O^A P_A``, with ``P_A`` the linear part of A's post-attention norm
  (Gemma-2/3, OLMo-2; its per-position scale is dropped), else the identity;
* ``QK_B = N_B W_Q^B D_q (N_B W_K^{kv(B)} D_k)^T`` and ``OV_B = N_B W_V^{kv(B)} W_O^B`` with
  ``N_B`` the linear part of B's ``ln1`` (``centre * weight``; Gemma's ``1 + weight``) and
  ``D_q``, ``D_k`` the elementwise weights of QK-norm (Qwen3, Gemma-3, OLMo-2); rotary
  embeddings are ignored (position-independent scores, as in the paper).

The scores are invariant to a positive scale of either side, so the dropped norm scales do not
matter except through their per-position variation.

GQA: a key or value input belongs to a KV head ``g`` shared by query heads ``G(g)``. K- and
V-composition into it are computed with the group's maps stacked side by side,
``[QK_h^T]_{h in G(g)}`` and ``[OV_{g,h}]_{h in G(g)}``: ``sqrt(sum_h ||OV_A QK_h^T||^2) /
(||OV_A|| sqrt(sum_h ||QK_h||^2))`` (the same with OV for V). Without GQA (one query head per
group) these are exactly the per-head scores. Q-composition is per query head.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.circuits.graph import Edge, EdgeGraph
from headscope.circuits.methods import circuit_mask, register_circuit_method
from headscope.models.norms import NormSpec, block_norm, norm_spec


def _norm_matrix(spec: NormSpec | None, d: int) -> torch.Tensor:
    """The linear part of a norm as a (d, d) matrix acting on row vectors: ``x -> centre(x) * w``."""
    if spec is None:
        return torch.eye(d)
    centre = torch.eye(d) - (1.0 / d if spec.centred else 0.0)
    return centre @ torch.diag(spec.weight.float().cpu())


def _qk_norm_weight(model: Any, layer: int, which: str, unit: int, d_head: int) -> torch.Tensor:
    """Elementwise weight of the q_norm / k_norm for one head (ones without QK-norm)."""
    attn = model.bridge.blocks[layer].attn
    module = getattr(attn, "submodules", {}).get(which)
    if module is None:
        return torch.ones(d_head)
    w = norm_spec(model, module, f"block {layer}'s {which}").weight.float().cpu()
    return w if w.numel() == d_head else w.view(-1, d_head)[unit]


class CompositionWeights:
    """Per-layer effective matrices of every head (see the module docstring), float32 on CPU."""

    def __init__(self, model: Any) -> None:
        self.model = model
        d = model.d_model
        self.ov_out: dict[tuple[int, int], torch.Tensor] = {}  # OV_A P_A (writer side)
        self.qk: dict[tuple[int, int], torch.Tensor] = {}  # QK_B (reader side), per query head
        self.ov_in: dict[tuple[int, int], torch.Tensor] = {}  # OV_B (reader side), per query head
        for layer in range(model.n_layers):
            attn = model.bridge.blocks[layer].attn
            wq, wk = attn.W_Q.detach().float().cpu(), attn.W_K.detach().float().cpu()
            wv, wo = attn.W_V.detach().float().cpu(), attn.W_O.detach().float().cpu()
            n_in = _norm_matrix(block_norm(model, layer, "ln1"), d)
            post = _norm_matrix(block_norm(model, layer, "ln1_post"), d)
            for h in range(model.n_heads):
                g = model.kv_head(h)
                dq = _qk_norm_weight(model, layer, "q_norm", h, model.d_head)
                dk = _qk_norm_weight(model, layer, "k_norm", g, model.d_head)
                self.ov_out[(layer, h)] = wv[g] @ wo[h] @ post
                self.qk[(layer, h)] = (n_in @ wq[h] * dq) @ (n_in @ wk[g] * dk).T
                self.ov_in[(layer, h)] = n_in @ wv[g] @ wo[h]


def composition_score(left: torch.Tensor, rights: list[torch.Tensor]) -> float:
    """``sqrt(sum ||left @ R||^2) / (||left|| sqrt(sum ||R||^2))`` over the stacked ``rights``."""
    num = sum(float((left @ r).pow(2).sum()) for r in rights) ** 0.5
    den = float(left.norm()) * sum(float(r.pow(2).sum()) for r in rights) ** 0.5
    return num / den if den > 0 else float("nan")


def composition_scores(model: Any, graph: EdgeGraph) -> tuple[list[Edge], torch.Tensor]:
    """Q/K/V composition of every head -> later head q (per query head) / k, v (per KV head) edge."""
    weights = CompositionWeights(model)
    groups = model.kv_groups()
    edges, scores = [], []
    for e in graph.edges:
        s, r = e.sender, e.receiver
        if s.kind != "head" or r.kind != "head":
            continue
        left = weights.ov_out[(s.layer, s.unit)]
        if r.input == "q":
            rights = [weights.qk[(r.layer, r.unit)]]
        elif r.input == "k":
            rights = [weights.qk[(r.layer, h)].T for h in groups[r.unit]]
        else:
            rights = [weights.ov_in[(r.layer, h)] for h in groups[r.unit]]
        edges.append(e)
        scores.append(composition_score(left, rights))
    return edges, torch.tensor(scores)


@register_circuit_method("composition", "Q/K/V composition scores of head pairs from the weights (no prompts)")
def composition(model: Any, task: Any, top_edges: int = 20, threshold: float | None = None) -> Any:
    """Head-to-head composition scores (see the module docstring); the task is not run.

    Args:
        top_edges, threshold: the circuit flag (highest composition scores).
    """
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    graph = EdgeGraph.of(model)
    edges, scores = composition_scores(model, graph)
    circuit = circuit_mask(scores, top_edges, threshold)
    info = task.describe() if hasattr(task, "describe") else {"name": str(task)}
    prov = build_provenance(model, task=info, analyzer="circuit:composition",
                            options={"top_edges": top_edges, "threshold": threshold},
                            choices={"score": "Elhage et al. 2021 composition (Frobenius), norm-aware (ln1, post-attention norm, QK-norm weights), rotary ignored",
                                     "gqa": "k/v receivers are KV heads: the group's query heads' maps stacked, never split"})
    return EdgeScores.from_edges(edges, scores.tolist(), circuit.tolist(), model=model.spec,
                                 task=getattr(task, "name", str(task)), method="composition", provenance=prov)
