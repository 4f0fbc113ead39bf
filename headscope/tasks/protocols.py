"""Task contracts: what a method needs from a task, as ``typing.Protocol`` classes.

A method declares the contract it requires (``requires=`` of
:func:`headscope.methods.register_method`); an incompatible task is refused before the model
loads, with one line that names the tasks that fit (:meth:`headscope.methods.MethodInfo.check_task`).
Every contract is structural (a task satisfies it by having the methods, whatever its class) and
every member name means one thing across contracts, so ``isinstance(task, ContrastiveTask)`` is
the whole check: no name lists of tasks, no ``hasattr`` probing in the methods.

===========================  =======================================  ============================
contract                     members                                  built-in tasks
===========================  =======================================  ============================
:class:`Task`                ``describe()``                           every task
:class:`PromptTask`          ``tokens(model) -> (n, pos)``            induction, corpus, ioi, ...
:class:`ContrastiveTask`     ``batch(model) -> ContrastiveBatch``     ioi, facts, induction_contrast,
                                                                      user_file
:class:`RepeatedPromptTask`  ``body_ids(model)``, ``tokens(model)``   induction
:class:`DecodingTask`        ``trials(model) -> [Trial]``             needle
:class:`SafetyTask`          ``requests(kind)``, ``padded(model,      safety
                             kind)``, ``token_rows(model, kind)``
:class:`MultipleChoiceTask`  ``split(model)``, ``item_batch(model,    mcqa
                             items)``
:class:`TextWindowTask`      ``windows(model, split)``                corpus
:class:`RelationPairsTask`   ``pairs(model)``, ``raw_pairs()``        relation
:class:`SequenceFamilyTask`  ``tokenized(model)``, ``prompts(model)``, succession
                             ``token_ids(model)``
===========================  =======================================  ============================

Members are methods only, so ``issubclass(TaskClass, Contract)`` works on the registered
factories too (``headscope tasks`` and the refusal messages list compatible tasks that way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from headscope.tasks.contrastive import ContrastiveBatch


@runtime_checkable
class Task(Protocol):
    """Any task: ``describe()`` gives the dict its results' provenance records (``name`` first)."""

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class PromptTask(Task, Protocol):
    """Prompts as one token batch: ``tokens(model)`` LongTensor (n, pos)."""

    def tokens(self, model: Any) -> torch.Tensor: ...


@runtime_checkable
class ContrastiveTask(Task, Protocol):
    """Clean/corrupted prompts of equal shape with END, answer and wrong tokens
    (:class:`headscope.tasks.contrastive.ContrastiveBatch`): patching, attribution, circuits.
    (The built-in ones are prompt tasks too: ``tokens(model)`` is the clean batch.)"""

    def batch(self, model: Any) -> ContrastiveBatch: ...


@runtime_checkable
class RepeatedPromptTask(PromptTask, Protocol):
    """Random token bodies repeated ``[BOS] R R ...`` (attention-pattern scores)."""

    def body_ids(self, model: Any) -> list[list[int]]: ...


@runtime_checkable
class DecodingTask(Task, Protocol):
    """Needle trials decoded greedily: ``trials(model)`` -> [:class:`headscope.tasks.needle.Trial`]."""

    def trials(self, model: Any) -> list[Any]: ...


@runtime_checkable
class SafetyTask(Task, Protocol):
    """Harmful and harmless requests: ``padded(model, kind)`` -> (tokens (n, pos), last (n,))."""

    def requests(self, kind: str = "harmful") -> list[str]: ...

    def token_rows(self, model: Any, kind: str = "harmful") -> list[list[int]]: ...

    def padded(self, model: Any, kind: str = "harmful") -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class MultipleChoiceTask(Task, Protocol):
    """Lettered multiple-choice questions: ``split(model)`` -> (validation items, test items)."""

    def split(self, model: Any) -> tuple[list[Any], list[Any]]: ...

    def item_batch(self, model: Any, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class TextWindowTask(Task, Protocol):
    """Plain-text windows for training and scoring lenses: ``windows(model, split)`` (n, seq_len)."""

    def windows(self, model: Any, split: str = "train") -> torch.Tensor: ...


@runtime_checkable
class RelationPairsTask(Task, Protocol):
    """(source, target) token pairs of one relation (MAPS)."""

    def raw_pairs(self) -> list[list[str]]: ...

    def pairs(self, model: Any) -> tuple[list[int], list[int], int]: ...


@runtime_checkable
class SequenceFamilyTask(Task, Protocol):
    """Ordinal sequence families (numbers, days, months, letters) for successor heads."""

    def tokenized(self, model: Any) -> dict[str, Any]: ...

    def token_ids(self, model: Any) -> list[int]: ...

    def prompts(self, model: Any) -> list[tuple[str, list[int]]]: ...


CONTRACTS: tuple[type, ...] = (Task, PromptTask, ContrastiveTask, RepeatedPromptTask, DecodingTask, SafetyTask,
                               MultipleChoiceTask, TextWindowTask, RelationPairsTask, SequenceFamilyTask)


def contract_label(contract: type) -> str:
    """A reader's name for a contract: ``ContrastiveTask`` -> ``a contrastive task``."""
    words = {"Task": "any task", "PromptTask": "a prompt task", "ContrastiveTask": "a contrastive task "
             "(clean/corrupted prompts)", "RepeatedPromptTask": "a repeated-token task", "DecodingTask":
             "a decoding (needle) task", "SafetyTask": "a safety task (harmful/harmless requests)",
             "MultipleChoiceTask": "a multiple-choice task", "TextWindowTask": "a text-window (corpus) task",
             "RelationPairsTask": "a relation task", "SequenceFamilyTask": "a sequence-family task"}
    return words.get(contract.__name__, contract.__name__)


def fits(task: Any, requires: tuple[type, ...]) -> bool:
    """Whether ``task`` satisfies one of the contracts ``requires`` (empty: any task fits)."""
    return not requires or any(isinstance(task, c) for c in requires)


def check_fits(task: Any, requires: tuple[type, ...], who: str) -> None:
    """A one-line error when ``task`` satisfies none of ``requires``, naming the registered
    tasks that do; ``who`` is what needs them (``analyzer 'ships'``)."""
    if fits(task, requires):
        return
    from headscope.errors import HeadscopeError
    from headscope.tasks.registry import tasks_fitting

    name = getattr(task, "name", type(task).__name__)
    needs = " or ".join(contract_label(c) for c in requires)
    raise HeadscopeError(f"{who} needs {needs}; task '{name}' is not one. Tasks that fit: "
                         f"{', '.join(tasks_fitting(requires)) or 'none registered'}.")
