"""Contrastive tasks: clean and corrupted inputs of equal shape, answers and a metric.

A contrastive task is what causal analyses (activation patching, path patching, attribution
patching, ablations) run on. ``task.batch(model)`` returns a :class:`ContrastiveBatch`:

- ``clean``, ``corrupted``: LongTensor (n, pos) of equal shape (right-padded when prompts
  differ in length; causal attention makes right padding invisible to the real positions);
- ``answer``, ``wrong``: LongTensor (n,), the correct and the wrong next token of the clean
  prompt (e.g. IO and S in IOI);
- ``positions``: name -> LongTensor (n,) of per-row token positions (``END`` is always there:
  the position the metric reads, the last real token);
- ``groups``: one template/group label per row (for per-template means).

The default metric is the logit difference ``logit[answer] - logit[wrong]`` at ``END``
(Wang et al. 2022, "Interpretability in the Wild"), per row; analyses average it over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.errors import HeadscopeError

END = "END"


@dataclass
class ContrastiveBatch:
    """Clean/corrupted token batches with answers and named positions (see module docstring)."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    positions: dict[str, torch.Tensor]
    groups: list[str] = field(default_factory=list)
    clean_text: list[str] = field(default_factory=list)
    corrupted_text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise HeadscopeError(
                f"clean prompts are {tuple(self.clean.shape)} tokens but corrupted prompts are "
                f"{tuple(self.corrupted.shape)}: each corrupted prompt must have as many tokens as its clean prompt."
            )
        n = self.clean.shape[0]
        for name, t in (("answer", self.answer), ("wrong", self.wrong), *self.positions.items()):
            if t.shape != (n,):
                raise HeadscopeError(f"{name} must have one entry per prompt ({n}); got shape {tuple(t.shape)}.")
        if END not in self.positions:
            raise HeadscopeError("a contrastive batch needs an 'END' position (where the metric reads).")
        if not self.groups:
            self.groups = ["all"] * n

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])

    @property
    def end(self) -> torch.Tensor:
        """(n,) the metric position of each row."""
        return self.positions[END]

    def logit_diff(self, end_logits: torch.Tensor) -> torch.Tensor:
        """Per-row logit difference from logits at END.

        Args:
            end_logits: (k * n, d_vocab) logits at each row's END, for ``k`` stacked copies
                of the batch (k = 1 for a plain run).

        Returns:
            (k * n,) ``logit[answer] - logit[wrong]``.
        """
        k = end_logits.shape[0] // self.n
        ans = self.answer.to(end_logits.device).repeat(k)
        wrong = self.wrong.to(end_logits.device).repeat(k)
        rows = torch.arange(end_logits.shape[0], device=end_logits.device)
        return end_logits[rows, ans] - end_logits[rows, wrong]

    def full_logits_metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean logit difference from full logits (batch, pos, d_vocab): a scalar, in the form
        TransformerLens ``patching`` metrics take."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        return self.logit_diff(logits[rows, self.end.to(logits.device)]).mean()


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """Right-pad token id lists into a LongTensor (n, max_len)."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def pad_id(model: Any) -> int:
    """The token used for right padding (pad, else eos, else 0); it is never attended to by
    real positions under causal attention."""
    tok = model.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id):
        if cand is not None:
            return int(cand)
    return 0


def encode(model: Any, text: str, bos: bool) -> list[int]:
    """Token ids of ``text`` (with BOS first when ``bos``)."""
    ids = list(model.tokenizer.encode(text, add_special_tokens=False))
    if bos and model.bos_token_id is not None:
        ids = [int(model.bos_token_id), *ids]
    return ids


def build_batch(
    model: Any,
    clean_text: Sequence[str],
    corrupted_text: Sequence[str],
    answers: Sequence[str],
    wrongs: Sequence[str],
    bos: bool,
    named: dict[str, Sequence[int]] | None = None,
    groups: Sequence[str] | None = None,
) -> ContrastiveBatch:
    """Tokenize text pairs into a :class:`ContrastiveBatch`, checking every constraint.

    Args:
        model: a :class:`headscope.models.Model`.
        clean_text, corrupted_text: prompts (without BOS); each pair must tokenize to the
            same length.
        answers, wrongs: single-token continuations (e.g. ``" Mary"``).
        bos: prepend BOS.
        named: extra named positions, as indices into the tokenized prompt (with BOS).
        groups: a label per row (template id).
    """
    n = len(clean_text)
    if not n:
        raise HeadscopeError("the task has no prompts: give at least one row.")
    if not (len(corrupted_text) == len(answers) == len(wrongs) == n):
        raise HeadscopeError("clean, corrupted, answer and wrong columns must have the same number of rows.")
    clean_ids, corr_ids = [], []
    for i, (c, r) in enumerate(zip(clean_text, corrupted_text, strict=True)):
        a, b = encode(model, c, bos), encode(model, r, bos)
        if len(a) != len(b):
            raise HeadscopeError(
                f"row {i}: clean prompt is {len(a)} tokens but corrupted prompt is {len(b)} for "
                f"{model.spec}: corrupted prompts must tokenize to the same length ({c!r} vs {r!r})."
            )
        clean_ids.append(a)
        corr_ids.append(b)
    answer_ids = [_answer_id(model, a, i) for i, a in enumerate(answers)]
    wrong_ids = [_answer_id(model, w, i) for i, w in enumerate(wrongs)]
    check_rows(clean_text, clean_ids, corr_ids, answers, answer_ids, wrongs, wrong_ids)
    pad = pad_id(model)
    clean = pad_right(clean_ids, pad)
    model.check_length(int(clean.shape[1]))
    positions = {k: torch.tensor(list(v), dtype=torch.long) for k, v in (named or {}).items()}
    positions[END] = torch.tensor([len(ids) - 1 for ids in clean_ids], dtype=torch.long)
    return ContrastiveBatch(
        clean=clean,
        corrupted=pad_right(corr_ids, pad),
        answer=torch.tensor(answer_ids, dtype=torch.long),
        wrong=torch.tensor(wrong_ids, dtype=torch.long),
        positions=positions,
        groups=list(groups) if groups is not None else [],
        clean_text=list(clean_text),
        corrupted_text=list(corrupted_text),
    )


def check_rows(
    clean_text: Sequence[str], clean_ids: Sequence[Sequence[int]], corr_ids: Sequence[Sequence[int]],
    answers: Sequence[str], answer_ids: Sequence[int], wrongs: Sequence[str], wrong_ids: Sequence[int],
) -> None:
    """Refuse degenerate rows, whose logit difference or clean-vs-corrupted gap is 0 by
    construction (they would make every normalised patching score NaN): a row whose answer and
    wrong token are the same token, or whose corrupted prompt tokenizes to its clean prompt."""
    for i in range(len(clean_ids)):
        if answer_ids[i] == wrong_ids[i]:
            same = "the same text" if answers[i] == wrongs[i] else "the same token"
            raise HeadscopeError(
                f"row {i}: answer {answers[i]!r} and wrong {wrongs[i]!r} are {same}, so their logit difference is "
                "always 0: give a wrong answer that differs from the answer."
            )
        if list(clean_ids[i]) == list(corr_ids[i]):
            raise HeadscopeError(
                f"row {i}: the corrupted prompt tokenizes exactly like the clean prompt ({clean_text[i]!r}), so "
                "patching it changes nothing: corrupt the prompt (e.g. swap the name the answer depends on)."
            )


def _answer_id(model: Any, text: str, row: int) -> int:
    try:
        tid = model.single_token(text)
    except HeadscopeError as exc:
        raise HeadscopeError(f"row {row}: {exc}") from None
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is not None and tid == unk and text.strip() != str(getattr(model.tokenizer, "unk_token", "")):
        raise HeadscopeError(
            f"row {row}: answer {text!r} is not in {model.spec}'s vocabulary (it would be read as "
            f"{model.tokenizer.unk_token!r}): choose a word the tokenizer knows."
        )
    return tid


def single_token_words(model: Any, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words (with ``prefix``) that are exactly one token for this tokenizer."""
    out = []
    for w in words:
        text = prefix + w
        if len(model.tokenizer.encode(text, add_special_tokens=False)) == 1:
            out.append(w)
    return out


@dataclass
class Baselines:
    """Per-row clean and corrupted metric values: (n,) each."""

    clean: torch.Tensor
    corrupted: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Means and the fraction of rows where the clean answer wins (metric > 0)."""
        return {
            "clean_metric": float(self.clean.mean()),
            "corrupted_metric": float(self.corrupted.mean()),
            "clean_fraction_correct": float((self.clean > 0).float().mean()),
        }


def contrastive_batch(model: Any, task: Any) -> ContrastiveBatch:
    """``task.batch(model)``, or a one-line error when ``task`` is not a
    :class:`~headscope.tasks.protocols.ContrastiveTask` (for methods called directly, outside
    :func:`headscope.plan.plan`, which refuses such a task before the model loads)."""
    from headscope.tasks.protocols import ContrastiveTask

    if not isinstance(task, ContrastiveTask):
        from headscope.tasks.registry import tasks_fitting

        raise HeadscopeError(f"task '{getattr(task, 'name', task)}' has no clean/corrupted inputs: use a contrastive "
                             f"task ({', '.join(tasks_fitting((ContrastiveTask,)))}).")
    return task.batch(model)
