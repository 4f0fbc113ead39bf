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

from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class _Search:
    """The greedy search's record over the (n_layers, n_heads) grid.

    Attributes:
        alone: each candidate's angle alone (step 1), NaN for non-candidates.
        order: 1..steps for the selected heads, 0 otherwise.
        set_angle: the set's angle right after the head joined, NaN otherwise.
        chosen: the selected heads in order; history: the set's angle after each step.
    """

    alone: np.ndarray
    order: np.ndarray
    set_angle: np.ndarray
    chosen: list[Head] = field(default_factory=list)
    history: list[float] = field(default_factory=list)


def _check_options(ablation: str, vectors: str, representation: str, steps: int, rank: int) -> None:
    """One-line errors for unknown ablations, vectors, representations and steps / rank below 1."""
    check_ablation(ablation)
    if vectors not in SINGULAR_VECTORS:
        raise HeadscopeError(f"vectors must be left or right (singular vectors); got '{vectors}'.")
    if representation not in REPRESENTATIONS:
        raise HeadscopeError(f"representation must be {' or '.join(REPRESENTATIONS)}; got '{representation}'.")
    if steps < 1 or rank < 1:
        raise HeadscopeError("steps and rank must be at least 1: e.g. -o steps=3 -o rank=1.")


def _candidate_pool(model: Any, task: Any, candidates: str | int | None, ablation: str, eps: float,
                    batch_size: int | None, progress: bool) -> tuple[list[Head], str]:
    """The candidate heads and the rule that chose them (all, top N by Ships, or a given list)."""
    if candidates is None or candidates == "all":
        return select_heads(model, None), "all heads"
    if isinstance(candidates, int) or str(candidates).isdigit():
        n = int(candidates)
        sh = ships(model, task, ablation=ablation, eps=eps, batch_size=batch_size, progress=progress)
        return sh.heads("ships_kl", k=n), f"top {n} heads by Ships ({ablation})"
    return model.parse_heads(str(candidates)), "given list"


def _angle_of_ablation(model: Any, tokens: torch.Tensor, last: torch.Tensor, ablation: str, eps: float, means: Any,
                       batch_size: int | None, rank: int, vectors: str,
                       representation: str) -> Callable[[list[Head]], float]:
    """The function: head set -> angle (degrees) between the unablated and the ablated top subspaces.

    ``tokens`` (n, pos) right-padded requests, ``last`` (n,) their last real positions; the
    representations are (n, d_model), the compared singular vectors (n, rank) or (d_model, rank).
    """
    base = top_singular(representations(model, tokens, last, [], batch_size, representation), rank, vectors)

    def angle(heads: list[Head]) -> float:
        ivs = build_ablation(ablation, heads, eps, means)
        rep = representations(model, tokens, last, ivs, batch_size, representation)
        return subspace_angle(base, top_singular(rep, rank, vectors))

    return angle


def _greedy_search(angle: Callable[[list[Head]], float], pool: list[Head], steps: int, shape: tuple[int, int],
                   progress: bool) -> _Search:
    """Grow the set ``steps`` times by the candidate whose addition gives the largest angle."""
    search = _Search(alone=np.full(shape, np.nan), order=np.zeros(shape), set_angle=np.full(shape, np.nan))
    for step in range(steps):
        best, best_angle = None, -1.0
        for head in progress_bar([h for h in pool if h not in search.chosen], f"sahara step {step + 1}", enabled=progress):
            a = angle(search.chosen + [head])
            if step == 0:
                search.alone[head] = a
            if a > best_angle:
                best, best_angle = head, a
        assert best is not None
        search.chosen.append(best)
        search.history.append(best_angle)
        search.order[best] = step + 1
        search.set_angle[best] = best_angle
    return search


def _sahara_scores(model: Any, task: Any, options: dict[str, Any], rule: str, n_candidates: int, n: int,
                   search: _Search) -> HeadScores:
    """The three metrics' rows with the provenance (``options`` as called, ``n`` requests)."""
    representation, vectors, rank, ablation, eps = (options[k] for k in ("representation", "vectors", "rank",
                                                                          "ablation", "eps"))
    prov = build_provenance(
        model, task=task.describe(), analyzer="sahara",
        options=options,
        choices={
            "representation": f"{representation_hook(model, representation)} at the last real token "
            + ("(after the final norm)" if representation == "final_norm" else "(before the final norm)"),
            "singular_vectors": f"top {rank} {vectors} singular vectors "
            + ("(request space, columns of U)" if vectors == "left" else "(d_model directions, columns of V)")
            + ", uncentred SVD",
            "angle": "sum of principal angles between the spans, degrees",
            "ablation": ablation, "eps": eps if ablation == "query_scale" else None,
            "candidates": rule, "n_candidates": n_candidates,
            "selected": [f"{layer}.{head}" for layer, head in search.chosen],
            "set_angle_per_step": search.history,
        },
    )
    common = {"model": model.spec, "task": task.name, "analyzer": "sahara"}
    extra = {"n": n}
    return HeadScores.concat(
        [HeadScores.from_matrix(search.alone, metric="sahara_angle", extra=extra, **common),
         HeadScores.from_matrix(search.order, metric="sahara_order", extra=extra, **common),
         HeadScores.from_matrix(search.set_angle, metric="sahara_set_angle", extra=extra, **common)],
        provenance=prov,
    )


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
    _check_options(ablation, vectors, representation, steps, rank)
    tokens, last = task.padded(model, "harmful")
    if rank > min(tokens.shape[0], model.d_model):
        raise HeadscopeError(f"rank {rank} exceeds the {tokens.shape[0]} requests: lower -o rank or raise -o n_prompts.")
    pool, rule = _candidate_pool(model, task, candidates, ablation, eps, batch_size, progress)
    if steps > len(pool):
        raise HeadscopeError(f"steps={steps} but only {len(pool)} candidate heads: lower -o steps.")
    means = ablation_means(model, task, ablation, pool, batch_size)
    angle = _angle_of_ablation(model, tokens, last, ablation, eps, means, batch_size, rank, vectors, representation)
    search = _greedy_search(angle, pool, steps, (model.n_layers, model.n_heads), progress)
    options = {"steps": steps, "rank": rank, "candidates": candidates, "ablation": ablation, "eps": eps,
               "vectors": vectors, "representation": representation, "batch_size": batch_size}
    return _sahara_scores(model, task, options, rule, len(pool), int(tokens.shape[0]), search)
