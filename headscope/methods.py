"""The one method registry: head analyzers and circuit methods, looked up by name.

Contract (scikit-learn style): ``method(model: Model, task: Task, **options) -> HeadScores``
(``kind="heads"``) or ``-> EdgeScores`` (``kind="edges"``, a circuit method). One
:class:`MethodInfo` per method, in one table, with method families by kind as Inseq's
``Registry`` has them. The CLI (``score``, ``circuit``), the Python API (:func:`headscope.score`,
:func:`headscope.circuit`), recipes and sharding all go through :func:`headscope.plan.plan` and
:func:`headscope.plan.run`, which read this table.

A method declares:

- ``requires``: the task contract(s) it needs (:mod:`headscope.tasks.protocols`; any one of
  several fits). A task that satisfies none is refused before the model loads, with one line
  that lists the tasks that fit (:meth:`MethodInfo.check_task`).
- ``presets``: named option sets (``-o preset=paper``); explicit options win, and provenance
  records ``preset`` and ``preset_options``. A preset named ``paper`` reproduces the published
  algorithm (``docs/methods.md``).
- ``shard``: a :class:`headscope.scale.spec.ShardSpec` if its sweep splits into independent units.

Built-ins are found by walking the packages :data:`BUILTIN_PACKAGES` (every module is imported
once, as scikit-learn's ``all_estimators`` walks its package): adding a method is one file with
one ``@register_method`` (or ``@register_analyzer`` / ``@register_circuit_method``, the same
call with the kind set) and no list to edit. A result's provenance names the method as
:attr:`MethodInfo.key`: the analyzer's name, or ``circuit:<name>`` for a circuit method.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from headscope.errors import HeadscopeError, suggest

Kind = Literal["heads", "edges"]
KINDS: dict[str, str] = {"heads": "analyzer", "edges": "circuit method"}
CIRCUIT_PREFIX = "circuit:"
BUILTIN_PACKAGES = ("headscope.analyzers", "headscope.circuits")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method (see the module docstring).

    Attributes:
        name: the name users type (``activation_patching``, ``eap_ig``).
        fn: ``(model, task, **options) -> HeadScores | EdgeScores``.
        summary: one line for ``headscope tasks``.
        kind: ``heads`` (an analyzer) or ``edges`` (a circuit method).
        requires: task contracts, any one of which fits; empty = any task.
        presets: named option sets.
        shard: a ShardSpec, or None if the method does not split.
    """

    name: str
    fn: Callable[..., Any]
    summary: str
    kind: Kind = "heads"
    requires: tuple[type, ...] = ()
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shard: Any = None

    @property
    def key(self) -> str:
        """The provenance name: ``name`` for analyzers, ``circuit:<name>`` for circuit methods."""
        return self.name if self.kind == "heads" else CIRCUIT_PREFIX + self.name

    @property
    def label(self) -> str:
        """``analyzer 'activation_patching'`` / ``circuit method 'exact'`` (for messages)."""
        return f"{KINDS[self.kind]} '{self.name}'"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The registered tasks that satisfy :attr:`requires` (empty = any task)."""
        from headscope.tasks.registry import tasks_fitting

        return tasks_fitting(self.requires) if self.requires else ()

    def options(self) -> list[str]:
        """Keyword options the method accepts (beyond model and task); ``preset`` if it has presets."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        names = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        return [*names, "preset"] if self.presets and "preset" not in names else names

    def accepts(self, task: Any) -> bool:
        """Whether ``task`` satisfies one of the contracts in :attr:`requires`."""
        from headscope.tasks.protocols import fits

        return fits(task, self.requires)

    def check_task(self, task: Any) -> None:
        """A one-line error naming the compatible tasks when ``task`` does not fit."""
        from headscope.tasks.protocols import check_fits

        check_fits(task, self.requires, self.label)

    def coerce(self, options: Mapping[str, Any], where: str = "", text: bool = False) -> dict[str, Any]:
        """``options`` converted to the method's annotations (:mod:`headscope.params`); a value
        that does not fit is a one-line error. ``preset`` is text. ``text=True``: values are
        command-line text, and those of unannotated options are read with
        :func:`headscope.params.parse_text`."""
        from headscope.params import coerce_all

        return coerce_all(self.fn, options, f"{where}{KINDS[self.kind]} '{self.name}' option", extra={"preset": str},
                          text=text)

    def expand_preset(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        """``options`` with ``preset=NAME`` replaced by the preset's options (explicit ones win).

        Returns:
            ``(options to call the method with, preset name or None, the options the preset set)``.
        """
        opts = dict(options)
        name = opts.pop("preset", None)
        if name is None:
            return opts, None, {}
        if name not in self.presets:
            known = ", ".join(self.presets) or "none"
            raise HeadscopeError(
                f"{self.label} has no preset {name!r}.{suggest(str(name), self.presets)} Presets: {known}."
            )
        applied = {k: v for k, v in self.presets[name].items() if k not in opts}
        return {**self.presets[name], **opts}, str(name), applied


METHODS: dict[str, MethodInfo] = {}


class KindView(MutableMapping[str, MethodInfo]):
    """The registered methods of one kind, always current (``ANALYZERS``, ``CIRCUIT_METHODS``):
    a view of :data:`METHODS` (deleting a name unregisters it, e.g. a test's temporary method)."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def _items(self) -> dict[str, MethodInfo]:
        load_builtins()
        return {n: m for n, m in METHODS.items() if m.kind == self.kind}

    def __getitem__(self, name: str) -> MethodInfo:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __setitem__(self, name: str, info: MethodInfo) -> None:
        if info.kind != self.kind or info.name != name:
            raise TypeError(f"{info.label} does not belong under {name!r} in the {KINDS[self.kind]}s")
        METHODS[name] = info

    def __delitem__(self, name: str) -> None:
        if name not in self._items():
            raise KeyError(name)
        del METHODS[name]


def register_method(
    name: str,
    summary: str,
    kind: Kind = "heads",
    requires: type | tuple[type, ...] = (),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    shard: Any = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn(model, task, **options)`` under ``name`` (see the module docstring).

    Args:
        kind: ``heads`` (returns HeadScores) or ``edges`` (returns EdgeScores).
        requires: a task contract or a tuple of them (any one fits); empty = any task.
        presets: named option sets, e.g. ``{"paper": {"eps": 1e-4}}``; every key must be an option of ``fn``.
        shard: a :class:`headscope.scale.spec.ShardSpec` (see docs/scaling.md).
    """
    if kind not in KINDS:
        raise TypeError(f"kind must be one of {sorted(KINDS)}; got {kind!r}")
    contracts = requires if isinstance(requires, tuple) else (requires,)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = MethodInfo(name, fn, summary, kind, contracts, dict(presets or {}), shard)
        accepted = set(info.options())
        unknown_shard = sorted(set(getattr(shard, "options", ())) - accepted)
        if unknown_shard:
            raise TypeError(f"the shard spec of {info.label} sets unknown options {unknown_shard}")
        for preset, values in info.presets.items():
            unknown = sorted(set(values) - accepted)
            if unknown:
                raise TypeError(f"preset {preset!r} of {info.label} sets unknown options {unknown}")
        old = METHODS.get(name)
        if old is not None and old.kind != kind:
            raise TypeError(f"{info.label}: the name is taken by {old.label}")
        METHODS[name] = info
        return fn

    return deco


_LOADED: set[str] = set()


def load_builtins() -> None:
    """Import every module of :data:`BUILTIN_PACKAGES` once, registering the built-in methods."""
    for package in BUILTIN_PACKAGES:
        if package in _LOADED:
            continue
        _LOADED.add(package)
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
            importlib.import_module(mod.name)


def get_method(name: str, kind: Kind | None = None) -> MethodInfo:
    """The method called ``name`` (``circuit:<name>`` names a circuit method), with close-name
    suggestions on a miss; ``kind`` restricts the lookup to one family."""
    load_builtins()
    if name.startswith(CIRCUIT_PREFIX):
        name, kind = name[len(CIRCUIT_PREFIX):], "edges"
    family = {n: m for n, m in METHODS.items() if kind is None or m.kind == kind}
    if name in family:
        return family[name]
    if kind == "edges":
        raise HeadscopeError(f"unknown circuit method '{name}'.{suggest(name, family)} Methods: {', '.join(sorted(family))}.")
    noun = "analyzer" if kind == "heads" else "method"
    raise HeadscopeError(
        f"unknown {noun} '{name}'.{suggest(name, family)} {noun.capitalize()}s: "
        f"{', '.join(sorted(family))} (see `headscope tasks`)."
    )


def list_methods(kind: Kind | None = None) -> list[MethodInfo]:
    """Every registered method (of one kind), in registration order."""
    load_builtins()
    return [m for m in METHODS.values() if kind is None or m.kind == kind]


def sharded(kind: Kind) -> tuple[str, ...]:
    """Names of the methods of ``kind`` that split into shards (for messages)."""
    return tuple(sorted(m.name for m in list_methods(kind) if m.shard is not None))
