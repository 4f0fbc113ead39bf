"""Trained per-head lenses as an analyzer (Sakarvadia et al. 2023, "Attention Lens").

Trains one lens per selected head on the ``corpus`` task's training windows
(:mod:`headscope.lens.train`) and scores each head by held-out KL(p_model || lens), for the
trained lens and for the training-free lens (``ln="residual"``, which is the trained lens at
initialisation). Lower is better; ``kl_gain`` = training-free minus trained. Heads not trained
get NaN. ``heldout_kl_constant`` is the head-independent reference of the best constant
prediction (the mean training next-token distribution): a lens must beat it to show that it
reads information from the head rather than token frequencies. ``save=PATH.safetensors`` also writes the lens (reload it with
:func:`headscope.lens.store.load_lens` or ``headscope lens decode --lens PATH``).

    headscope score --task corpus --analyzer trained_lens -o heads=18.6,23.2 -o steps=300
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.train import DEFAULT_BATCH_TOKENS, DEFAULT_LR, DEFAULT_STEPS
from headscope.results import HeadScores, build_provenance


@register_analyzer(
    "trained_lens",
    summary="Attention Lens (Sakarvadia et al. 2023): train per-head lenses, score held-out KL vs the training-free lens",
    tasks=("corpus",),
)
def trained_lens(
    model: Any,
    task: Any,
    heads: str = "",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    param: str = "factored",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    save: str | None = None,
    progress: bool = False,
) -> HeadScores:
    """Train lenses for ``heads`` ("L.H,...") and score held-out KL.

    Args:
        heads: heads to train (required: each head's lens is d_model x d_vocab-sized work).
        steps, lr, batch_tokens, param, seed: training settings (see ``headscope.lens.train``).
        checkpoint_dir, checkpoint_every, resume: checkpointing.
        save: write the trained lens to this .safetensors path.
        progress: progress bar.

    Returns:
        HeadScores with metrics ``heldout_kl_trained``, ``heldout_kl_free``, ``kl_gain`` and
        ``heldout_kl_constant``.
    """
    from headscope.lens.train import fit_and_evaluate

    if not heads:
        raise HeadscopeError("name the heads to train: -o heads=18.6,23.2.")
    chosen = model.parse_heads(heads)
    lens, kls, losses = fit_and_evaluate(model, task, chosen, steps, lr, batch_tokens, param, seed,
                                         checkpoint_dir, checkpoint_every, resume, progress)
    if save:
        lens.save(save)
    shape = (model.n_layers, model.n_heads)
    trained, free, const = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for (layer, head) in chosen:
        trained[layer, head] = kls[f"{layer}.{head}"]["trained"]
        free[layer, head] = kls[f"{layer}.{head}"]["training_free"]
        const[layer, head] = kls[f"{layer}.{head}"]["best_constant"]
    prov = build_provenance(
        model, task=task.describe(), analyzer="trained_lens",
        options={"heads": heads, "steps": steps, "lr": lr, "batch_tokens": batch_tokens, "param": param, "seed": seed,
                 "checkpoint_dir": checkpoint_dir, "resume": resume, "save": save},
        choices={"objective": "KL(p_model || softmax(lens(head output / residual final-norm scale)))",
                 "init": "final-norm-weighted W_U (= training-free lens, ln=residual)", "param": param,
                 "optimiser": "Adam", "constant_baseline": "mean training next-token distribution of the model", "eval": "held-out documents of the corpus", "final_loss": losses[-1] if losses else None,
                 "n_eval_tokens": int(lens.metadata.get("n_eval_tokens", 0))},
        seed=seed,
    )
    common = {"model": model.spec, "task": task.name, "analyzer": "trained_lens"}
    return HeadScores.concat(
        [HeadScores.from_matrix(trained, metric="heldout_kl_trained", **common),
         HeadScores.from_matrix(free, metric="heldout_kl_free", **common),
         HeadScores.from_matrix(free - trained, metric="kl_gain", **common),
         HeadScores.from_matrix(const, metric="heldout_kl_constant", **common)],
        provenance=prov,
    )
