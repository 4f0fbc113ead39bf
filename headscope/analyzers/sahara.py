"""Sahara: dataset-level greedy search for a set of safety heads (Zhou et al. 2024, Sec. 3.2,
"Safety Attention Head AttRibution Algorithm").

Reference code: ``ydyjya/SafetyHeadAttribution`` (commit 6203a04), ``lib/Sahara/attribution.py``
and ``lib/Sahara/svd.py``; the choices below cite its lines. headscope re-implements them on
the bridge (no code copied).

Representation matrix: for the ``n`` harmful requests of task ``safety``, ``R`` (n, d_model)
stacks each prompt's hidden state at its last real token. ``representation="final_norm"``
(default, the reference's) reads it *after* the final norm: the reference takes
``outputs.hidden_states[-1]`` (attribution.py:49-50), which its model fills with
``self.norm(hidden_states)`` (``lib/utils/custommodel.py:502-506``); on the bridge that is
``ln_final.hook_out``. ``representation="resid_post"`` reads
``blocks.{L-1}.hook_resid_post`` (before the final norm) instead. With a head set ``S``
ablated together we get ``R_S``.

Change of the representation subspace: take the top-``rank`` singular vectors of ``R`` and
``R_S`` (uncentred SVD, ``R = U Sigma V^T``) and compute the principal angles between the two
spans (``theta_i = arccos(sigma_i(A^T B))``); the score is their sum, in degrees.
``vectors="left"`` (default, the reference's) uses the columns of ``U`` -- request-space
vectors of length ``n`` -- as ``compute_subspace_similarity`` does (``u1[:, :1]``,
svd.py:15-22, rank 1 hard-coded). ``vectors="right"`` uses the columns of ``V`` (d_model
directions) instead. ``rank=1`` is the reference's; larger ranks sum the principal angles.

Ablation: ``query_scale`` multiplies each ablated head's query by ``eps``; the reference's
default search config is ``mask_qkv=['q']``, ``scale_factor=1e-5``, ``mask_type='scale_mask'``
(attribution.py:11-16), applied to the projected query states (custommodel.py:247-249), so
the default ``eps`` is 1e-5. ``mean`` and ``zero`` are headscope's alternatives (as Ships).

Greedy search: ``S = {}``; at each of ``steps`` steps, ablate ``S + {h}`` for every candidate
``h`` not in ``S``, add the head with the largest angle, repeat (attribution.py:83-107; the
reference searches every head of every layer). Candidates: all heads (the reference's), the
``candidates`` heads with the highest Ships score (computed first; this keeps the search
affordable on real models), or an explicit list.

Where headscope departs from the reference, whatever the options: prompts come from the
``safety`` task (chat template by default; the reference wraps each request as
``"## Query:{request}\\n## Answer:"``, attribution.py:41) and are run right-padded in batches
(the reference runs one unpadded prompt at a time; under causal attention the last real token
is unaffected); the reference's default search runs one step (``search_step=1``).

Choices (recorded): representation hook, left/right singular vectors, ``rank``, uncentred,
angle sum in degrees, ``ablation`` / ``eps``, candidate rule, the chosen set and the set's
angle after each step. Preset ``paper``: ``vectors=left``, ``representation=final_norm``,
``eps=1e-5``, ``rank=1``, ``ablation=query_scale``, all heads as candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.analyzers.ships import ablation_means, select_heads, ships
from headscope.errors import HeadscopeError
from headscope.progress import progress_bar
from headscope.results import HeadScores, build_provenance
from headscope.safety.ablation import build_ablation, check_ablation
from headscope.tasks.protocols import SafetyTask
from headscope.trace.stream import capture_stream

Head = tuple[int, int]


SINGULAR_VECTORS: tuple[str, ...] = ("left", "right")
REPRESENTATIONS: dict[str, str] = {
    "final_norm": "ln_final.hook_out",  # after the final norm (the reference's hidden_states[-1])
    "resid_post": "blocks.{last}.hook_resid_post",  # the last block's output, before the final norm
}
PAPER_PRESET: dict[str, Any] = {
    "vectors": "left", "representation": "final_norm", "eps": 1e-5, "rank": 1, "ablation": "query_scale",
    "candidates": None,
}


def top_singular(matrix: torch.Tensor, rank: int, vectors: str = "left") -> torch.Tensor:
    """Top-``rank`` singular vectors of (n, d) ``matrix`` (uncentred SVD), float64.

    Returns:
        ``left``: (n, rank), columns of ``U``; ``right``: (d, rank), columns of ``V``.
    """
    u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u[:, :rank] if vectors == "left" else vh[:rank].T


def subspace_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sum of principal angles (degrees) between the column spans of orthonormal (m, r) ``a``, ``b``."""
    cos = torch.linalg.svdvals(a.T @ b).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)).sum())


def representation_hook(model: Any, representation: str) -> str:
    """Bridge hook alias of ``representation`` (``final_norm`` or ``resid_post``)."""
    return REPRESENTATIONS[representation].format(last=model.n_layers - 1)


def representations(model: Any, tokens: torch.Tensor, last: torch.Tensor, interventions: list[Any],
                    batch_size: int | None, representation: str = "final_norm") -> torch.Tensor:
    """Hidden state at each row's last real token: (batch, d_model)."""
    name = representation_hook(model, representation)
    return capture_stream(model, tokens, [name], interventions, batch_size, positions=last)[name]


@register_analyzer(
    "sahara",
    summary="Sahara (Zhou et al. 2024): greedy head set whose ablation most rotates the final hidden states' top singular subspace",
    requires=SafetyTask,
    presets={"paper": PAPER_PRESET},
)
def sahara(
    model: Any,
    task: Any,
    steps: int = 3,
    rank: int = 1,
    candidates: str | int | None = None,
    ablation: str = "query_scale",
    eps: float = 1e-5,
    vectors: str = "left",
    representation: str = "final_norm",
    batch_size: int | None = 16,
    progress: bool = False,
) -> HeadScores:
    """Greedy Sahara search.

    Args:
        steps: heads to select.
        rank: number of top singular vectors spanning the compared subspaces (reference: 1).
        candidates: None (all heads), an int N (the N heads with the highest Ships score), or
            heads "L.H,...".
        ablation: ``query_scale`` (default), ``mean`` or ``zero``.
        eps: query scale for ``query_scale`` (reference: 1e-5).
        vectors: ``left`` (reference: request-space columns of U) or ``right`` (d_model
            directions, columns of V).
        representation: ``final_norm`` (reference: after the final norm) or ``resid_post``
            (the last block's output, before it).
        batch_size: prompts per forward pass.
        progress: progress bars.

    Returns:
        HeadScores with metrics ``sahara_angle`` (each candidate's angle alone, step 1),
        ``sahara_order`` (1..steps for selected heads, 0 otherwise) and ``sahara_set_angle``
        (the set's angle right after the head joined; NaN otherwise). The selected set is in
        ``provenance["choices"]["selected"]``.
    """
    check_ablation(ablation)
    if vectors not in SINGULAR_VECTORS:
        raise HeadscopeError(f"vectors must be left or right (singular vectors); got '{vectors}'.")
    if representation not in REPRESENTATIONS:
        raise HeadscopeError(f"representation must be {' or '.join(REPRESENTATIONS)}; got '{representation}'.")
    if steps < 1 or rank < 1:
        raise HeadscopeError("steps and rank must be at least 1: e.g. -o steps=3 -o rank=1.")
    tokens, last = task.padded(model, "harmful")
    if rank > min(tokens.shape[0], model.d_model):
        raise HeadscopeError(f"rank {rank} exceeds the {tokens.shape[0]} requests: lower -o rank or raise -o n_prompts.")
    rule = "all heads"
    if candidates is None or candidates == "all":
        pool = select_heads(model, None)
    elif isinstance(candidates, int) or str(candidates).isdigit():
        n = int(candidates)
        sh = ships(model, task, ablation=ablation, eps=eps, batch_size=batch_size, progress=progress)
        pool = sh.heads("ships_kl", k=n)
        rule = f"top {n} heads by Ships ({ablation})"
    else:
        pool = model.parse_heads(str(candidates))
        rule = "given list"
    if steps > len(pool):
        raise HeadscopeError(f"steps={steps} but only {len(pool)} candidate heads: lower -o steps.")
    means = ablation_means(model, task, ablation, pool, batch_size)
    base = top_singular(representations(model, tokens, last, [], batch_size, representation), rank, vectors)

    def angle(heads: list[Head]) -> float:
        ivs = build_ablation(ablation, heads, eps, means)
        rep = representations(model, tokens, last, ivs, batch_size, representation)
        return subspace_angle(base, top_singular(rep, rank, vectors))

    shape = (model.n_layers, model.n_heads)
    alone, order, set_angle = np.full(shape, np.nan), np.zeros(shape), np.full(shape, np.nan)
    chosen: list[Head] = []
    history: list[float] = []
    for step in range(steps):
        best, best_angle = None, -1.0
        for head in progress_bar([h for h in pool if h not in chosen], f"sahara step {step + 1}", enabled=progress):
            a = angle(chosen + [head])
            if step == 0:
                alone[head] = a
            if a > best_angle:
                best, best_angle = head, a
        assert best is not None
        chosen.append(best)
        history.append(best_angle)
        order[best] = step + 1
        set_angle[best] = best_angle
    prov = build_provenance(
        model, task=task.describe(), analyzer="sahara",
        options={"steps": steps, "rank": rank, "candidates": candidates, "ablation": ablation, "eps": eps,
                 "vectors": vectors, "representation": representation, "batch_size": batch_size},
        choices={
            "representation": f"{representation_hook(model, representation)} at the last real token "
            + ("(after the final norm)" if representation == "final_norm" else "(before the final norm)"),
            "singular_vectors": f"top {rank} {vectors} singular vectors "
            + ("(request space, columns of U)" if vectors == "left" else "(d_model directions, columns of V)")
            + ", uncentred SVD",
            "angle": "sum of principal angles between the spans, degrees",
            "ablation": ablation, "eps": eps if ablation == "query_scale" else None,
            "candidates": rule, "n_candidates": len(pool),
            "selected": [f"{layer}.{head}" for layer, head in chosen],
            "set_angle_per_step": history,
        },
    )
    common = {"model": model.spec, "task": task.name, "analyzer": "sahara"}
    extra = {"n": int(tokens.shape[0])}
    return HeadScores.concat(
        [HeadScores.from_matrix(alone, metric="sahara_angle", extra=extra, **common),
         HeadScores.from_matrix(order, metric="sahara_order", extra=extra, **common),
         HeadScores.from_matrix(set_angle, metric="sahara_set_angle", extra=extra, **common)],
        provenance=prov,
    )
