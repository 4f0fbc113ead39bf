"""Trained per-head lenses as an analyzer (Sakarvadia et al. 2023, "Attention Lens").

Trains lenses for the selected heads on the ``corpus`` task's training windows
(:mod:`headscope.lens.train`, :mod:`headscope.lens.store`) and scores each head by held-out
KL(p_model || lens), for the trained lens and for the same lens at initialisation
(``heldout_kl_free``; with the defaults that is the training-free lens ``ln="residual"``).
Lower is better; ``kl_gain`` = at-initialisation minus trained. Heads not trained get NaN.
``heldout_kl_constant`` is the head-independent reference of the best constant prediction (the
mean training next-token distribution): a lens must beat it to show that it reads information
from the head rather than token frequencies. ``save=PATH.safetensors`` also writes the lens
(reload it with :func:`headscope.lens.store.load_lens` or ``headscope lens decode --lens PATH``).

The ``paper`` preset (``-o preset=paper``) follows the authors' reference code,
``msakarvadia/AttentionLens`` (read at @1cefad7, the last TransformerLens version, the one the
paper's experiments used; the later Hugging Face refactor keeps the same lens and loss):

- ``param=full``: one ``d_model x d_vocab`` linear map per head, initialised from ``W_U`` and
  ``b_U`` (``attention_lens/lens/registry/lensA.py``, ``LensA.__init__``: ``weight =
  unembed.T``, ``bias = bias``; ``unembed``/``bias`` are the ``fold_ln`` HookedTransformer's
  ``W_U``/``b_U``, ``attention_lens/train/lightning_lens.py``, ``__init__``);
- ``inputs=raw``: the head's output as cached (``hook_result``), not divided by the residual's
  norm scale (``LightningLens.forward``);
- ``objective=layer_sum``: one lens per layer whose logits are the sum of its heads' maps
  (``LensA.forward``: ``output_tensors.sum(dim=2)``); the reference sums all ``n_head`` heads of
  the layer, which ``heads=L.*`` selects;
- ``positions=last``: KL(p_model || lens) at the last position only (``LightningLens.kl_loss``:
  ``logits[:, -1, :]``, ``KLDivLoss(reduction="batchmean", log_target=True)``);
- ``lr=1e-3`` (``attention_lens/train/config.py``) and ``batch_tokens=40`` (``batch_size=4`` x
  ``accumulate_grad_batches=10`` texts per Adam step, one last position each).

Where the default departs: a factored map (``(x A + c) W_U + b``, ``A = I``, so the lens starts
as the training-free lens and costs d_model^2 rather than d_model x d_vocab parameters per
head), inputs divided by the residual's final-norm scale, each head trained alone, on every
position, lr 1e-2 with 256 positions per step. Always (both): float32 rather than 16-bit mixed
precision; the ``corpus`` task's windows (CPython's pydoc prose by default) rather than
BookCorpus; a fixed number of steps rather than one epoch with early stopping.

    headscope score --task corpus --analyzer trained_lens -o heads=18.6,23.2 -o steps=300
    headscope score --task corpus --analyzer trained_lens -o preset=paper -o heads='18.*'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.train import DEFAULT_BATCH_TOKENS, DEFAULT_LR, DEFAULT_STEPS
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import TextWindowTask

Head = tuple[int, int]
PAPER = {"param": "full", "inputs": "raw", "objective": "layer_sum", "positions": "last", "lr": 1e-3, "batch_tokens": 40}


def expand_heads(model: Any, text: str) -> list[Head]:
    """Parse ``"18.6,23.2"``; ``"L.*"`` names every head of layer ``L``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    out: list[Head] = []
    for item in items:
        if item.endswith(".*"):
            layer = item[:-2]
            if not layer.isdigit():
                raise HeadscopeError(f"cannot parse heads '{item}': write LAYER.* for a whole layer, e.g. '18.*'.")
            out += [model.check_head(int(layer), h) for h in range(model.n_heads)]
        else:
            out += model.parse_heads(item)
    if not out:
        raise HeadscopeError("name the heads to train: -o heads=18.6,23.2 (or a whole layer: -o heads=18.*).")
    return list(dict.fromkeys(out))


@register_analyzer(
    "trained_lens",
    summary="Attention Lens (Sakarvadia et al. 2023): train per-head lenses, score held-out KL vs the lens at init",
    requires=TextWindowTask,
    presets={"paper": PAPER},
)
def trained_lens(
    model: Any,
    task: Any,
    heads: str = "",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    param: str = "factored",
    inputs: str = "scaled",
    objective: str = "head",
    positions: str = "all",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    save: str | None = None,
    progress: bool = False,
) -> HeadScores:
    """Train lenses for ``heads`` ("L.H,..." or "L.*") and score held-out KL.

    Args:
        heads: heads to train (required: each head's lens is d_model x d_vocab-sized work).
        steps, lr, batch_tokens, seed: training settings (see ``headscope.lens.train``).
        param: ``factored`` (default) or ``full`` (paper).
        inputs: ``scaled`` (default: head output / residual final-norm scale) or ``raw`` (paper).
        objective: ``head`` (default: each head alone) or ``layer_sum`` (paper: the sum of a
            layer's heads' logits).
        positions: ``all`` (default) or ``last`` (paper: each window's last token).
        checkpoint_dir, checkpoint_every, resume: checkpointing.
        save: write the trained lens to this .safetensors path.
        progress: progress bar.

    Returns:
        HeadScores with metrics ``heldout_kl_trained``, ``heldout_kl_free``, ``kl_gain`` and
        ``heldout_kl_constant`` (with ``layer_sum``, every head of a layer carries its layer's
        KL).
    """
    from headscope.lens.store import HeadLens
    from headscope.lens.train import POSITIONS, fit_and_evaluate

    if not heads:
        raise HeadscopeError("name the heads to train: -o heads=18.6,23.2 (or a whole layer: -o heads=18.*).")
    HeadLens.check_options(param, inputs, objective)
    if positions not in POSITIONS:
        raise HeadscopeError(f"unknown lens positions '{positions}': choose {', '.join(POSITIONS)}.")
    chosen = expand_heads(model, heads)
    lens, kls, losses = fit_and_evaluate(model, task, chosen, steps, lr, batch_tokens, param, seed,
                                         checkpoint_dir, checkpoint_every, resume, progress,
                                         inputs=inputs, objective=objective, positions=positions)
    if save:
        lens.save(save)
    shape = (model.n_layers, model.n_heads)
    trained, free, const = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for (layer, head) in chosen:
        trained[layer, head] = kls[f"{layer}.{head}"]["trained"]
        free[layer, head] = kls[f"{layer}.{head}"]["training_free"]
        const[layer, head] = kls[f"{layer}.{head}"]["best_constant"]
    init = ("W_U (final-norm weight folded) and b_U (final-norm bias folded), one full map per head" if param == "full"
            else "A = I, c = 0, b = 0 on the frozen final-norm-weighted W_U")
    prov = build_provenance(
        model, task=task.describe(), analyzer="trained_lens",
        options={"heads": heads, "steps": steps, "lr": lr, "batch_tokens": batch_tokens, "param": param,
                 "inputs": inputs, "objective": objective, "positions": positions, "seed": seed,
                 "checkpoint_dir": checkpoint_dir, "resume": resume, "save": save},
        choices={"loss": "KL(p_model || softmax(lens logits)), mean over rows",
                 "lens_input": "head output (hook_result), centred on LayerNorm models" + (
                     "" if inputs == "raw" else ", divided by the residual's final-norm scale"),
                 "objective": "each head's logits alone, mean over heads" if objective == "head"
                 else "sum of the logits of each layer's named heads, summed over layers",
                 "positions": "every non-BOS position" if positions == "all" else "each window's last position",
                 "init": init, "param": param, "heads_trained": [f"{a}.{b}" for a, b in chosen],
                 "optimiser": "Adam", "heldout_kl_free": "the same lens at initialisation",
                 "constant_baseline": "mean training next-token distribution of the model",
                 "eval": "held-out documents of the corpus, same positions as training",
                 "final_loss": losses[-1] if losses else None,
                 "n_train_rows": int(lens.metadata.get("n_train_tokens", 0)),
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
