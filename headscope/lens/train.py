"""Train per-head lenses (Sakarvadia et al. 2023, "Attention Lens") with KL to the model's output.

Objective, per unit ``g`` of the lens (:meth:`HeadLens.groups`: one head, or with
``objective="layer_sum"`` the lens's heads of one layer, whose logits are summed) and training
position ``t`` of a text corpus (:mod:`headscope.tasks.corpus`)::

    KL( p_model(. | x_<=t) || softmax(sum_{h in g} lens_h(x_h,t)) )

with ``p_model`` the model's final next-token distribution and ``x_h,t`` the lens input of head
``h`` (:mod:`headscope.lens.store`: the head's output, divided by the residual's final-norm scale
unless ``inputs="raw"``). The loss of a step is the mean KL over the sampled rows; over units it
is the mean (``head``) or, for ``layer_sum``, the sum, so that each layer's maps get exactly the
gradient of their own layer's loss, as when the reference trains one layer per run.

Positions (``positions``): ``all`` (default) trains on every non-BOS position of each window;
``last`` keeps only each window's last token, the paper's choice (``kl_loss`` in
``attention_lens/train/lightning_lens.py``: ``F.log_softmax(logits[:, -1, :])`` for the model and
the lens, ``KLDivLoss(reduction="batchmean", log_target=True)(lens, model)`` = KL(p_model ||
lens) averaged over the batch). Our windows are unpadded, so the last position is a real token;
the reference pads a batch to its longest text (GPT-2's pad is EOS, on the right), so for
shorter texts its ``[:, -1]`` reads a padding position; we do not reproduce that.

Head outputs, scales and the final norm's output are cached for all corpus windows once; each
step samples ``batch_tokens`` rows with a generator seeded by ``(seed, step)``, so a resumed run
sees the same batches as an uninterrupted one.

Optimiser: Adam (``lr``), as the reference (``configure_optimizers``; its default lr is 1e-3,
``attention_lens/train/config.py``, and a step sums ``accumulate_grad_batches=10`` batches of
``batch_size=4`` texts: 40 last positions per optimiser step, which the ``paper`` preset of
:mod:`headscope.analyzers.trained_lens` sets). The reference trains in 16-bit mixed precision
for one epoch of BookCorpus; we train in float32 on the ``corpus`` task. Checkpoints: every
``checkpoint_every`` steps to ``checkpoint_dir/lens-step{N}.safetensors`` (lens tensors, Adam
moments as ``opt.*`` tensors, ``step`` in the metadata); ``resume=True`` continues from the
newest checkpoint there.

Evaluation (:func:`heldout_kl`): the same KL on the held-out windows, per unit, for the trained
lens and for the same lens at initialisation (with the defaults, ``factored`` and ``scaled``,
that is the training-free lens ``ln="residual"``). A head-independent reference is reported
beside them (:func:`constant_kl`): the best *constant* prediction, the teacher's mean next-token
distribution over the training rows (the minimiser of the expected KL(p || q) over constant
q). A lens that only learns token frequencies through its bias reaches this value; a lens below
it reads something from the head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.lens.core import final_logits, head_vectors
from headscope.lens.store import HeadLens, head_key, read_lens_file, read_lens_metadata
from headscope.progress import progress_bar
from headscope.trace.stream import capture_stream

Head = tuple[int, int]

# Training defaults shared by the API, the ``trained_lens`` analyzer and ``headscope lens train``.
# With them, lenses for SmolLM2 heads 18.6 and 23.2 beat the best constant prediction on held-out
# text (lr 1e-3 / 200 steps / 64 positions did not); see docs/findings.md.
DEFAULT_STEPS = 300
DEFAULT_LR = 1e-2
DEFAULT_BATCH_TOKENS = 256


POSITIONS: tuple[str, ...] = ("all", "last")


@dataclass
class LensData:
    """Cached inputs for a set of windows: raw head outputs, residual scales and the teacher's final-norm output.

    Attributes:
        raw: (n_rows, n_heads, d_model) raw head outputs (one row per kept position).
        scale: (n_rows, 1) residual final-norm scales.
        teacher: (n_rows, d_model) ``ln_final.hook_normalized`` (the model's logits follow).
        positions: ``all`` or ``last`` (which positions of each window the rows are).
    """

    raw: torch.Tensor
    scale: torch.Tensor
    teacher: torch.Tensor
    positions: str = "all"

    @property
    def n_rows(self) -> int:
        return int(self.raw.shape[0])


def collect(model: Any, windows: torch.Tensor, heads: Sequence[Head], batch_size: int = 8, skip_bos: bool = True,
            positions: str = "all") -> LensData:
    """Run the corpus windows (n_windows, seq) once and cache what training needs.

    ``positions="all"`` keeps every position but BOS; ``"last"`` keeps each window's last
    position only (the paper's; windows are unpadded, so it is a real token).
    """
    if positions not in POSITIONS:
        raise HeadscopeError(f"unknown lens positions '{positions}': choose {', '.join(POSITIONS)}.")
    vecs, scale = head_vectors(model, windows, heads, batch_size=batch_size)
    normed = capture_stream(model, windows, ["ln_final.hook_normalized"], batch_size=batch_size)["ln_final.hook_normalized"]
    if positions == "last":
        start = windows.shape[1] - 1
    else:
        bos = model.prepend_bos and model.bos_token_id is not None and bool((windows[:, 0] == model.bos_token_id).all())
        start = 1 if skip_bos and bos else 0
    raw = vecs[:, start:].reshape(-1, len(heads), vecs.shape[-1])
    sc = scale[:, start:].reshape(-1, 1)
    return LensData(raw=raw, scale=sc, teacher=normed[:, start:].reshape(-1, normed.shape[-1]), positions=positions)


def lens_inputs(lens: HeadLens, data: LensData) -> torch.Tensor:
    """The lens's inputs for every row: (n_rows, n_heads, d_model)."""
    return lens.prepare(data.raw, data.scale.unsqueeze(-2))


def lens_loss(lens: HeadLens, x: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """The training objective on rows ``x`` (n, n_heads, d_model) with teacher log-probs (n, d_vocab):
    mean over units for ``objective="head"``, sum over layers for ``layer_sum``."""
    kls = torch.stack([kl_to_teacher(teacher_logp, lens.group_logits(members, x)) for _, members in lens.groups()])
    return kls.sum() if lens.objective == "layer_sum" else kls.mean()


def kl_to_teacher(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over rows; teacher log-probs and student logits (n, d_vocab)."""
    return (teacher_logp.exp() * (teacher_logp - student_logits.log_softmax(-1))).sum(-1).mean()


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for p in directory.glob("lens-step*.safetensors"):
        m = re.fullmatch(r"lens-step(\d+)\.safetensors", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _save_checkpoint(lens: HeadLens, opt: torch.optim.Adam, step: int, directory: Path, meta: dict[str, Any]) -> Path:
    extra: dict[str, torch.Tensor] = {}
    names = dict(lens.params.named_parameters())
    for name, p in names.items():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                extra[f"opt.{name}.{key}"] = state[key].detach().contiguous().cpu()
    return lens.save(directory / f"lens-step{step}.safetensors", extra, {**meta, "step": str(step)})


# settings a resumed run must share with its checkpoint, and the flag that sets each
RESUME_KEYS = {"heads": "--heads", "param": "--param", "inputs": "-o inputs", "objective": "-o objective",
               "positions": "-o positions", "lr": "--lr", "batch_tokens": "--batch-tokens",
               "seed": "--seed", "corpus": "--corpus/--seq-len/--n-train/--n-eval",
               "weights_sha256": "--model", "model_spec": "--model"}


def check_checkpoint_dir(directory: str | Path | None, resume: bool) -> Path | None:
    """The checkpoint directory, checked writable (a one-line error otherwise); it is created
    when the first checkpoint is written."""
    if directory is None:
        if resume:
            raise HeadscopeError("--resume needs --checkpoint-dir (where the earlier run saved its checkpoints).")
        return None
    ckdir = Path(directory).expanduser()
    if ckdir.exists() and not ckdir.is_dir():
        raise HeadscopeError(f"--checkpoint-dir {ckdir} is a file, not a directory: give a directory.")
    if resume and not ckdir.is_dir():
        raise HeadscopeError(f"--resume: checkpoint directory {ckdir} does not exist: check the path, or drop --resume.")
    from headscope.results.atomic import check_writable_dir

    return check_writable_dir(ckdir, f"checkpoints to {ckdir} (--checkpoint-dir)")


def _same(stored: str | None, wanted: Any) -> bool:
    if stored is None:
        return False
    if isinstance(wanted, str):
        return stored == wanted
    try:
        return json.loads(stored) == json.loads(json.dumps(wanted))
    except ValueError:
        return False


def check_resume(directory: str | Path, expected: dict[str, Any], steps: int | None = None) -> tuple[int, Path] | None:
    """The newest checkpoint in ``directory`` as ``(step, path)``, after checking that it was
    written with the same settings as ``expected`` (keys of :data:`RESUME_KEYS`; values as
    saved: text, or JSON for numbers and dicts). ``None`` when there is no checkpoint yet.

    A mismatch is a one-line error naming the setting: resuming would mix two runs.
    """
    found = _checkpoints(Path(directory).expanduser())
    if not found:
        return None
    step, path = found[-1]
    meta = read_lens_metadata(path)
    for key, wanted in expected.items():
        stored = meta.get(key)
        if not _same(stored, wanted):
            shown = wanted if isinstance(wanted, str) else json.dumps(wanted)
            raise HeadscopeError(
                f"checkpoint {path} was written with {key}={stored}, not {shown}: resuming would mix two runs. "
                f"Resume with the same {RESUME_KEYS.get(key, key)}, or use a new --checkpoint-dir."
            )
    if steps is not None and step > steps:
        raise HeadscopeError(f"checkpoint {path} is at step {step}, past --steps {steps}: raise --steps or use a new --checkpoint-dir.")
    return step, path


def _restore(lens: HeadLens, opt: torch.optim.Adam, path: Path) -> int:
    tensors, meta = read_lens_file(path)
    if (meta.get("heads") != ",".join(map(head_key, lens.heads)) or meta.get("param") != lens.param
            or meta.get("inputs", "scaled") != lens.inputs or meta.get("objective", "head") != lens.objective):
        raise HeadscopeError(f"checkpoint {path} is for heads {meta.get('heads')} ({meta.get('param')}): resume with the same --heads/--param.")
    if "step" not in meta or not str(meta["step"]).isdigit():
        raise HeadscopeError(f"checkpoint {path} has no step in its metadata: it is not a training checkpoint.")
    step = int(meta["step"])
    with torch.no_grad():
        for name, p in lens.params.named_parameters():
            layer, head, kind = name.split("_")
            p.copy_(tensors[f"{layer}.{head}.{kind}"])
            if f"opt.{name}.exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[f"opt.{name}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].clone(),
                }
    return step


def check_settings(steps: int, lr: float, batch_tokens: int, checkpoint_every: int) -> None:
    """One-line errors for training settings that cannot work."""
    if steps < 0 or batch_tokens < 1:
        raise HeadscopeError("steps must be >= 0 and batch_tokens >= 1.")
    if not lr > 0 or lr != lr or lr == float("inf"):
        raise HeadscopeError(f"lr must be a positive number; got {lr}.")
    if checkpoint_every < 1:
        raise HeadscopeError("checkpoint_every must be >= 1.")


def resume_expectations(model: Any, heads: Sequence[Head], param: str, meta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run (see :func:`check_resume`)."""
    out: dict[str, Any] = {"heads": ",".join(map(head_key, heads)), "param": param}
    for key in ("inputs", "objective", "positions", "lr", "batch_tokens", "seed", "corpus"):
        if key in meta:
            out[key] = meta[key]
    if getattr(model, "weights_hash", ""):
        out["weights_sha256"] = str(model.weights_hash)
    else:
        out["model_spec"] = str(model.spec)
    return out


def train_lens(
    model: Any,
    heads: Sequence[Head],
    train: LensData,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    param: str = "factored",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
    inputs: str = "scaled",
    objective: str = "head",
) -> tuple[HeadLens, list[float]]:
    """Train lenses for ``heads`` on the rows of ``train``; returns ``(lens, loss per step)`` (steps
    run in this call). ``inputs``/``objective``: see :mod:`headscope.lens.store`.

    Raises a one-line error when ``resume`` finds a checkpoint for other heads or settings.
    """
    check_settings(steps, lr, batch_tokens, checkpoint_every)
    torch.manual_seed(seed)
    lens = HeadLens(model, heads, param, inputs, objective)
    opt = torch.optim.Adam(lens.params.parameters(), lr=lr)
    start = 0
    ckdir = check_checkpoint_dir(checkpoint_dir, resume)
    meta = {**(meta or {}), "lr": lr, "batch_tokens": batch_tokens, "seed": seed, "inputs": inputs,
            "objective": objective, "positions": train.positions, "loss": "KL(p_model || lens)"}
    if resume and ckdir is not None:
        newest = check_resume(ckdir, resume_expectations(model, heads, param, meta), steps)
        if newest is not None:
            start = _restore(lens, opt, newest[1])
    x = lens_inputs(lens, train)
    n = train.n_rows
    losses: list[float] = []
    for step in progress_bar(range(start, steps), "training lens", enabled=progress, total=max(0, steps - start)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (batch_tokens,), generator=gen)
        with torch.no_grad():
            teacher = final_logits(model, train.teacher[idx]).log_softmax(-1)
        loss = lens_loss(lens, x[idx], teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if ckdir is not None and (step + 1) % checkpoint_every == 0:
            _save_checkpoint(lens, opt, step + 1, ckdir, meta)
    lens.metadata.update({k: str(v) for k, v in meta.items()})
    lens.metadata["steps"] = str(steps)
    return lens, losses


def heldout_kl(model: Any, lens: HeadLens, data: LensData, chunk: int = 256) -> dict[str, dict[str, float]]:
    """Held-out KL(p_model || lens) per unit of the objective, for the trained lens and for the
    same lens at initialisation (``training_free``: with ``factored``/``full`` and ``scaled``
    inputs on a model without unembedding bias, the training-free lens ``ln="residual"``).

    Returns:
        ``{unit: {"trained": kl, "training_free": kl}}`` with ``unit`` ``"L.H"`` (``objective="head"``)
        or ``"L"`` (``layer_sum``); nats, mean over the rows.
    """
    init = HeadLens(model, lens.heads, lens.param, lens.inputs, lens.objective)
    x = lens_inputs(lens, data)
    out: dict[str, dict[str, float]] = {}
    n = data.n_rows
    with torch.inference_mode():
        for name, members in lens.groups():
            tot_t = tot_f = 0.0
            for s in range(0, n, chunk):
                sl = slice(s, min(n, s + chunk))
                teacher = final_logits(model, data.teacher[sl]).log_softmax(-1)
                m = sl.stop - sl.start
                tot_t += float(kl_to_teacher(teacher, lens.group_logits(members, x[sl]))) * m
                tot_f += float(kl_to_teacher(teacher, init.group_logits(members, x[sl]))) * m
            out[name] = {"trained": tot_t / n, "training_free": tot_f / n}
    return out


def unit_of(lens: HeadLens, head: Head) -> str:
    """The name of the objective's unit that ``head`` belongs to (``"L.H"`` or ``"L"``)."""
    return head_key(head) if lens.objective == "head" else str(head[0])


def constant_kl(model: Any, train: LensData, held: LensData, chunk: int = 256) -> float:
    """Held-out KL(p_model || q_mean) of the best constant predictor, q_mean = mean training p_model."""
    with torch.inference_mode():
        total = None
        for s in range(0, train.teacher.shape[0], chunk):
            p = final_logits(model, train.teacher[s : s + chunk]).float().softmax(-1).sum(0)
            total = p if total is None else total + p
        assert total is not None
        log_q = (total / train.teacher.shape[0]).clamp_min(1e-30).log()
        kl, n = 0.0, held.teacher.shape[0]
        for s in range(0, n, chunk):
            teacher = final_logits(model, held.teacher[s : s + chunk]).float().log_softmax(-1)
            kl += float((teacher.exp() * (teacher - log_q)).sum(-1).sum())
    return kl / n


def fit_and_evaluate(
    model: Any,
    task: Any,
    heads: Sequence[Head],
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    param: str = "factored",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = False,
    inputs: str = "scaled",
    objective: str = "head",
    positions: str = "all",
) -> tuple[HeadLens, dict[str, dict[str, float]], list[float]]:
    """Collect the corpus task's train/eval windows, train, and measure held-out KLs.

    Returns:
        ``(lens, {"L.H": {"trained": kl, "training_free": kl, "best_constant": kl}}, losses)``
        (one entry per head; with ``objective="layer_sum"`` every head of a layer carries its
        layer's values); the KLs are also in ``lens.metadata`` (saved with the file).
    """
    for layer, head in heads:  # before the (slow) collection
        model.check_head(layer, head)
    check_settings(steps, lr, batch_tokens, checkpoint_every)
    HeadLens.check_options(param, inputs, objective)
    if positions not in POSITIONS:
        raise HeadscopeError(f"unknown lens positions '{positions}': choose {', '.join(POSITIONS)}.")
    meta = {"corpus": task.describe(), "param": param}
    ckdir = check_checkpoint_dir(checkpoint_dir, resume)
    if resume and ckdir is not None:
        check_resume(ckdir, resume_expectations(model, heads, param, {
            **meta, "lr": lr, "batch_tokens": batch_tokens, "seed": seed, "inputs": inputs, "objective": objective,
            "positions": positions}), steps)
    train = collect(model, task.windows(model, "train"), heads, positions=positions)
    held = collect(model, task.windows(model, "eval"), heads, positions=positions)
    lens, losses = train_lens(model, heads, train, steps, lr, batch_tokens, param, seed, checkpoint_dir,
                              checkpoint_every, resume, progress, meta, inputs, objective)
    by_unit = heldout_kl(model, lens, held)
    best_constant = constant_kl(model, train, held)
    kls = {head_key(h): {**by_unit[unit_of(lens, h)], "best_constant": best_constant} for h in lens.heads}
    lens.metadata["heldout_kl"] = json.dumps(kls)
    lens.metadata["n_train_tokens"] = str(train.n_rows)
    lens.metadata["n_eval_tokens"] = str(held.n_rows)
    return lens, kls, losses
