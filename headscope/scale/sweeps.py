"""Which registry a sharded sweep belongs to: head analyzers or circuit methods.

A sweep is named as its result's provenance names it (``provenance["analyzer"]``): an analyzer
by its own name (``activation_patching``), a circuit method with the prefix ``circuit:``
(``circuit:exact``). Both registries hold :class:`~headscope.analyzers.registry.AnalyzerInfo`
records with an optional :class:`~headscope.scale.spec.ShardSpec`, so splitting, running and
merging (:mod:`headscope.scale.shard`, :mod:`headscope.scale.merge`) work the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headscope.errors import HeadscopeError

CIRCUIT_PREFIX = "circuit:"


@dataclass(frozen=True)
class Sweep:
    """A registered sweep looked up by its provenance name.

    Attributes:
        name: the provenance name (``activation_patching``, ``circuit:exact``).
        info: its registry record (``info.shard`` is its ShardSpec or None).
        run: ``(model, task, **options) -> result``, the registry's checked call.
        kind: ``analyzer`` or ``circuit method``, for messages.
        sharded: the names (without prefix) of this kind that can be split, for messages.
    """

    name: str
    info: Any
    run: Callable[..., Any]
    kind: str
    sharded: tuple[str, ...]

    @property
    def label(self) -> str:
        """``analyzer 'activation_patching'`` / ``circuit method 'exact'``."""
        return f"{self.kind} '{self.info.name}'"

    def refuse_unsharded(self, how: str) -> None:
        """A one-line error if this sweep has no ShardSpec; ``how`` says how to run it instead."""
        if self.info.shard is None:
            raise HeadscopeError(f"{self.label} cannot be split into shards: run it {how} "
                                 f"(sharded {self.kind}s: {', '.join(self.sharded)}).")


def lookup(name: str) -> Sweep:
    """The sweep called ``name`` (``circuit:<method>`` for circuit methods); unknown names are the
    registries' one-line errors."""
    if name.startswith(CIRCUIT_PREFIX):
        from headscope.circuits.methods import (
            CIRCUIT_METHODS,
            get_circuit_method,
            run_circuit_method,
        )

        method = name[len(CIRCUIT_PREFIX):]
        info = get_circuit_method(method)
        sharded = tuple(sorted(m for m, i in CIRCUIT_METHODS.items() if i.shard is not None))

        def run_method(model: Any, task: Any, **options: Any) -> Any:
            return run_circuit_method(method, model, task, **options)

        return Sweep(name, info, run_method, "circuit method", sharded)
    from headscope.analyzers.registry import ANALYZERS, get_analyzer, run_analyzer

    info = get_analyzer(name)
    sharded = tuple(sorted(a for a, i in ANALYZERS.items() if i.shard is not None))

    def run(model: Any, task: Any, **options: Any) -> Any:
        return run_analyzer(name, model, task, **options)

    return Sweep(name, info, run, "analyzer", sharded)
