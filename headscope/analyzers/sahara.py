"""Sahara: dataset-level greedy search for a set of safety heads (Zhou et al. 2024, Sec. 3.2,
"Safety Attention Head AttRibution Algorithm").

Representation matrix: for the ``n`` harmful requests of task ``safety``, ``R`` (n, d_model)
stacks the last layer's output (``blocks.{L-1}.hook_resid_post``, before the final norm) at each
prompt's last real token. With a head set ``S`` ablated together we get ``R_S``.

Change of the representation subspace: take the top-``rank`` **right** singular vectors of
``R`` and ``R_S`` (uncentred SVD; columns of ``V`` in ``R = U Sigma V^T``), i.e. the
d_model-space directions that dominate the requests' representations, and compute the principal
angles between the two spans (``theta_i = arccos(sigma_i(V_base^T V_S))``). The score is their
sum, in degrees (``rank=1``: the angle between the top singular directions).
Why right singular vectors: they live in the model's representation space, where a safety
feature is a direction the heads write; the left singular vectors live in "request space"
(one weight per request), depend on which and how many requests are in the set, and would
change when ablation merely re-weights requests without moving the shared direction.

Greedy search: ``S = {}``; at each of ``steps`` steps, ablate ``S + {h}`` for every candidate
``h`` not in ``S``, add the head with the largest angle, repeat. Candidates: all heads, or the
``candidates`` heads with the highest Ships score (computed first; this keeps the search
affordable on real models), or an explicit list.

Choices (recorded): representation hook, right singular vectors, ``rank``, uncentred, angle
sum in degrees, ``ablation`` / ``eps`` (as Ships), candidate rule, the chosen set and the
set's angle after each step.
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
from headscope.trace.stream import capture_stream

Head = tuple[int, int]


def top_right_singular(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` right singular vectors of (n, d) ``matrix``: (d, rank), float64."""
    _, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return vh[:rank].T


def subspace_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sum of principal angles (degrees) between the column spans of orthonormal (d, r) ``a``, ``b``."""
    cos = torch.linalg.svdvals(a.T @ b).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)).sum())


def representations(model: Any, tokens: torch.Tensor, last: torch.Tensor, interventions: list[Any], batch_size: int | None) -> torch.Tensor:
    """Last layer's output at each row's last real token: (batch, d_model)."""
    name = f"blocks.{model.n_layers - 1}.hook_resid_post"
    return capture_stream(model, tokens, [name], interventions, batch_size, positions=last)[name]


@register_analyzer(
    "sahara",
    summary="Sahara (Zhou et al. 2024): greedy head set that most rotates the last-layer representation subspace",
    tasks=("safety",),
)
def sahara(
    model: Any,
    task: Any,
    steps: int = 3,
    rank: int = 1,
    candidates: str | int | None = None,
    ablation: str = "query_scale",
    eps: float = 1e-2,
    batch_size: int | None = 16,
    progress: bool = False,
) -> HeadScores:
    """Greedy Sahara search.

    Args:
        steps: heads to select.
        rank: number of top right singular vectors spanning the compared subspaces.
        candidates: None (all heads), an int N (the N heads with the highest Ships score), or
            heads "L.H,...".
        ablation: ``query_scale`` (default), ``mean`` or ``zero``.
        eps: query scale for ``query_scale``.
        batch_size: prompts per forward pass.
        progress: progress bars.

    Returns:
        HeadScores with metrics ``sahara_angle`` (each candidate's angle alone, step 1),
        ``sahara_order`` (1..steps for selected heads, 0 otherwise) and ``sahara_set_angle``
        (the set's angle right after the head joined; NaN otherwise). The selected set is in
        ``provenance["choices"]["selected"]``.
    """
    check_ablation(ablation)
    if steps < 1 or rank < 1:
        raise HeadscopeError("steps and rank must be at least 1: e.g. -o steps=3 -o rank=1.")
    tokens, last = task.batch(model, "harmful")
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
    base_v = top_right_singular(representations(model, tokens, last, [], batch_size), rank)

    def angle(heads: list[Head]) -> float:
        rep = representations(model, tokens, last, build_ablation(ablation, heads, eps, means), batch_size)
        return subspace_angle(base_v, top_right_singular(rep, rank))

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
        options={"steps": steps, "rank": rank, "candidates": candidates, "ablation": ablation, "eps": eps, "batch_size": batch_size},
        choices={
            "representation": f"blocks.{model.n_layers - 1}.hook_resid_post at the last real token (before the final norm)",
            "singular_vectors": f"top {rank} right singular vectors (d_model directions), uncentred SVD",
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
