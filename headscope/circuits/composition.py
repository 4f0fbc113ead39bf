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

The writer's own ``ln1`` (``writer_norm``):

* ``none`` (default): ``OV_A`` starts at ``W_V``, as above. The matrices are what lies on the
  path *from A's output to B's input*; A's ``ln1`` acts on the residual A *reads*, before that
  path, and composition asks how A's output is read downstream (Elhage et al. write
  the OV circuit of the head alone; their attention-only models set layer norm aside).
  Leaving it out keeps ``||OV_A||`` and A's write directions free of how A weights its input.
* ``fold``: TransformerLens's convention on folded weights (``fold_ln=True`` +
  ``center_writing_weights=True``, the defaults of ``TransformerBridge.enable_compatibility_mode``):
  ``ProcessWeights._fold_layer`` (transformer_lens/weight_processing.py) multiplies *every*
  head's ``W_Q``, ``W_K``, ``W_V`` by its ``ln1`` weight (``1 + weight`` with
  ``rmsnorm_uses_offset``) and, for LayerNorm, ``center_attention_weights`` subtracts the mean
  over ``d_model`` (``W -> C diag(w) W``, ``C = I - 11^T/d``); ``center_writing_weights``
  (LayerNorm only: ``should_center_writing_weights`` in ``process_weights``) centres every
  ``W_O`` over its output (``W_O -> W_O C``). ``TransformerBridge.all_composition_scores``
  then takes ``left = W_V W_O`` of those weights (transformer_bridge.py). So here
  ``OV_A = N_A W_V^{kv(A)} W_O^A C_w P_A`` and ``OV_B = N_B W_V^{kv(B)} W_O^B C_w`` with ``C_w = C``
  where ``ln1`` is a LayerNorm, else the identity (``QK_B`` is unchanged: ``C_w N_B = N_B``).
  ``P_A`` and the QK-norm weights stay as above (TransformerLens folds neither), so the scores
  equal TransformerLens's exactly on families without them (GPT-2, Llama, Mistral, Qwen2, ...).

GQA: a key or value input belongs to a KV head ``g`` shared by query heads ``G(g)``. K- and
V-composition into it are computed with the group's maps stacked side by side,
``[QK_h^T]_{h in G(g)}`` and ``[OV_{g,h}]_{h in G(g)}``: ``sqrt(sum_h ||OV_A QK_h^T||^2) /
(||OV_A|| sqrt(sum_h ||QK_h||^2))`` (the same with OV for V). Without GQA (one query head per
group) these are exactly the per-head scores. Q-composition is per query head.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from headscope.circuits.graph import Edge, EdgeGraph
from headscope.circuits.methods import circuit_mask, register_circuit_method
from headscope.errors import check_choice
from headscope.models.norms import NormSpec, block_norm, norm_spec

WRITER_NORMS = ("none", "fold")
"""``writer_norm`` values: ``none`` (the writer's ln1 left out of OV_A) or ``fold`` (TransformerLens's folded weights)."""


def check_writer_norm(writer_norm: str) -> str:
    """``writer_norm`` itself, or a one-line HeadscopeError naming the choices."""
    return check_choice("writer_norm", writer_norm, WRITER_NORMS,
                        "none (the writer's ln1 left out of its OV, default) or fold "
                        "(TransformerLens's fold_ln + center_writing_weights weights)")


WRITER_NORM_CHOICES = {
    "none": "the writer's own ln1 left out of OV_A = W_V W_O P_A (it acts on what the writer reads, not on the path to the reader)",
    "fold": "TransformerLens fold_ln + center_writing_weights: every head's ln1 folded into W_Q/W_K/W_V (the writer's included), "
            "W_O centred on LayerNorm families; as TransformerBridge.all_composition_scores on folded weights",
}


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
    """Every head's effective matrices in factored form (float32, CPU), per layer stacked over heads.

    Writer side ``OV_A = Lv_A Ro_A`` with ``Lv = W_V^{kv}`` (d, dh) and ``Ro = W_O P`` (dh, d);
    reader side ``QK_B = Lq_B Lk_B^T`` with ``Lq = N W_Q D_q``, ``Lk = N W_K^{kv} D_k`` and
    ``OV_B = Lr_B W_O^B`` with ``Lr = N W_V^{kv}`` (all (d, dh) per query head).

    ``writer_norm="fold"`` (module docstring): ``Lv = N W_V^{kv}``, ``Ro = W_O C_w P`` and the
    reader's ``W_O C_w``, ``C_w`` the centring matrix where ``ln1`` is a LayerNorm.
    """

    def __init__(self, model: Any, writer_norm: str = "none") -> None:
        fold = check_writer_norm(writer_norm) == "fold"
        d = model.d_model
        self.lv: list[torch.Tensor] = []  # (H, d, dh)
        self.ro: list[torch.Tensor] = []  # (H, dh, d)
        self.lq: list[torch.Tensor] = []
        self.lk: list[torch.Tensor] = []
        self.lr: list[torch.Tensor] = []
        self.wo: list[torch.Tensor] = []  # (H, dh, d)
        for layer in range(model.n_layers):
            attn = model.bridge.blocks[layer].attn
            wq, wk = attn.W_Q.detach().float().cpu(), attn.W_K.detach().float().cpu()
            wv, wo = attn.W_V.detach().float().cpu(), attn.W_O.detach().float().cpu()
            ln1 = block_norm(model, layer, "ln1")
            n_in = _norm_matrix(ln1, d)
            post = _norm_matrix(block_norm(model, layer, "ln1_post"), d)
            if fold and ln1 is not None and ln1.centred:  # center_writing_weights: W_O -> W_O C
                wo = wo @ (torch.eye(d) - 1.0 / d)
            kv = [model.kv_head(h) for h in range(model.n_heads)]
            dq = torch.stack([_qk_norm_weight(model, layer, "q_norm", h, model.d_head) for h in range(model.n_heads)])
            dk = torch.stack([_qk_norm_weight(model, layer, "k_norm", g, model.d_head) for g in kv])
            self.lv.append(n_in @ wv[kv] if fold else wv[kv])
            self.ro.append(wo @ post)
            self.lq.append((n_in @ wq) * dq[:, None, :])
            self.lk.append((n_in @ wk[kv]) * dk[:, None, :])
            self.lr.append(n_in @ wv[kv])
            self.wo.append(wo)

    def writer(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Writer head ``(layer, head)``'s ``OV_A = Lv @ Ro`` as the factors ``(Lv (d, dh), Ro (dh, d))``."""
        return self.lv[layer][head], self.ro[layer][head]

    def reader(self, layer: int, heads: list[int], kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The reader's maps ``X_h = left @ right`` ((d, dh) @ (dh, d)) for each query head ``h`` of
        ``heads`` (the receiver's :func:`reader_heads`): ``q``: ``QK_h = Lq Lk^T``; ``k``: ``QK_h^T =
        Lk Lq^T``; ``v``: ``OV_h = Lr W_O``. The composition numerator is ``sum_h ||OV_A X_h||_F^2``."""
        if kind == "q":
            return [(self.lq[layer][h], self.lk[layer][h].T) for h in heads]
        if kind == "k":
            return [(self.lk[layer][h], self.lq[layer][h].T) for h in heads]
        return [(self.lr[layer][h], self.wo[layer][h]) for h in heads]


def reader_heads(receiver: Any, groups: dict[int, list[int]]) -> list[int]:
    """The query heads whose maps a head receiver's composition stacks: itself for ``q``, its KV
    head's group for ``k``/``v`` (GQA: never split)."""
    return [receiver.unit] if receiver.input == "q" else list(groups[receiver.unit])


def _sq_norms(gram_left: torch.Tensor, m: torch.Tensor, gram_right: torch.Tensor) -> torch.Tensor:
    """``||L M R||_F^2 = tr(M^T (L^T L) M (R R^T))`` for stacks: gram_left (A, dh, dh),
    m (A, B, dh, dh), gram_right (B, dh, dh) -> (A, B)."""
    left = torch.einsum("axy,abyz->abxz", gram_left, m)
    return torch.einsum("abxz,bzw,abxw->ab", left, gram_right, m)


def composition_tables(model: Any, writer_norm: str = "none") -> dict[str, dict[tuple[int, int], torch.Tensor]]:
    """Squared Frobenius norms for every (writer layer, reader layer > writer layer):
    ``{"q"|"k"|"v": {(la, lb): (H, H) ||OV_A X_B||^2}, "ov": {la: (H,) ||OV_A||^2},
    "qk": {lb: (H,) ||QK_B||^2}, "ovb": {lb: (H,) ||OV_B||^2}}`` (``writer_norm``: module docstring)."""
    w = CompositionWeights(model, writer_norm)
    gram = lambda x: x.transpose(-1, -2) @ x  # noqa: E731  (.., d, dh) -> (.., dh, dh)
    out: dict[str, dict] = {"q": {}, "k": {}, "v": {}, "ov": {}, "qk": {}, "ovb": {}}
    for layer in range(model.n_layers):
        g_lv, g_ro = gram(w.lv[layer]), w.ro[layer] @ w.ro[layer].transpose(-1, -2)
        out["ov"][layer] = torch.einsum("hxy,hyx->h", g_lv, g_ro)
        g_q, g_k, g_r = gram(w.lq[layer]), gram(w.lk[layer]), gram(w.lr[layer])
        out["qk"][layer] = torch.einsum("hxy,hyx->h", g_q, g_k)
        g_wo = w.wo[layer] @ w.wo[layer].transpose(-1, -2)
        out["ovb"][layer] = torch.einsum("hxy,hyx->h", g_r, g_wo)
    for la in range(model.n_layers):
        g_lv = gram(w.lv[la])
        for lb in range(la + 1, model.n_layers):
            m_q = torch.einsum("axd,bdy->abxy", w.ro[la], w.lq[lb])  # Ro_A Lq_B
            m_k = torch.einsum("axd,bdy->abxy", w.ro[la], w.lk[lb])
            m_v = torch.einsum("axd,bdy->abxy", w.ro[la], w.lr[lb])
            out["q"][(la, lb)] = _sq_norms(g_lv, m_q, gram(w.lk[lb]))
            out["k"][(la, lb)] = _sq_norms(g_lv, m_k, gram(w.lq[lb]))
            out["v"][(la, lb)] = _sq_norms(g_lv, m_v, w.wo[lb] @ w.wo[lb].transpose(-1, -2))
    return out


def composition_scores(model: Any, graph: EdgeGraph, writer_norm: str = "none") -> tuple[list[Edge], torch.Tensor]:
    """Q/K/V composition of every head -> later head q (per query head) / k, v (per KV head) edge
    (``writer_norm``: module docstring)."""
    t = composition_tables(model, writer_norm)
    groups = model.kv_groups()
    edges, scores = [], []
    for e in graph.edges:
        s, r = e.sender, e.receiver
        if s.kind != "head" or r.kind != "head":
            continue
        members = reader_heads(r, groups)
        num = t[r.input][(s.layer, r.layer)][s.unit, members].sum()
        den = t["ov"][s.layer][s.unit] * t["qk" if r.input in "qk" else "ovb"][r.layer][members].sum()
        edges.append(e)
        scores.append(float((num / den).sqrt()) if den > 0 else float("nan"))
    return edges, torch.tensor(scores)


@register_circuit_method("composition", "Q/K/V composition scores of head pairs from the weights (no prompts)",
                         requires=())
def composition(model: Any, task: Any, top_edges: int = 20, threshold: float | None = None,
                writer_norm: Literal["none", "fold"] = "none") -> Any:
    """Head-to-head composition scores (see the module docstring); the task is not run.

    Args:
        top_edges, threshold: the circuit flag (highest composition scores).
        writer_norm: ``none`` (default): the writer's own ln1 is left out of ``OV_A`` (it acts
            on what A reads, not on the A -> B path); ``fold``: TransformerLens's folded weights
            (``fold_ln`` + ``center_writing_weights``: every head's ln1 in its W_Q/W_K/W_V, the
            writer's included, and W_O centred on LayerNorm families), as
            ``TransformerBridge.all_composition_scores`` on a compatibility-mode bridge.
    """
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    check_writer_norm(writer_norm)
    graph = EdgeGraph.of(model)
    edges, scores = composition_scores(model, graph, writer_norm)
    circuit = circuit_mask(scores, top_edges, threshold)
    info = task.describe() if hasattr(task, "describe") else {"name": str(task)}
    prov = build_provenance(model, task=info, analyzer="circuit:composition",
                            options={"top_edges": top_edges, "threshold": threshold, "writer_norm": writer_norm},
                            choices={"score": "Elhage et al. 2021 composition (Frobenius), norm-aware (ln1, post-attention norm, QK-norm weights), rotary ignored",
                                     "gqa": "k/v receivers are KV heads: the group's query heads' maps stacked, never split",
                                     "writer_norm": WRITER_NORM_CHOICES[writer_norm]})
    return EdgeScores.from_edges(edges, scores.tolist(), circuit.tolist(), model=model.spec,
                                 task=getattr(task, "name", str(task)), method="composition", provenance=prov)
