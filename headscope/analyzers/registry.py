"""The analyzer registry (scikit-learn style: one contract, looked up by name).

Contract: ``analyzer(model: Model, task: Task, **options) -> HeadScores``. Each analyzer
states its methodological choices in its docstring and records them in the result's
provenance under ``choices``.

Presets: an analyzer may register named option sets (``presets={"paper": {...}}``). The option
``preset=NAME`` (``-o preset=paper`` on the CLI) expands to that set; options given explicitly
win over the preset's. The result's provenance records ``preset`` and the options it set
(``preset_options``). A preset named ``paper`` reproduces the published algorithm and the
authors' reference code (see ``docs/methods.md``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headscope.errors import HeadscopeError, reject_unknown, suggest

# modules whose import registers built-in analyzers
_BUILTIN_MODULES = (
    "headscope.analyzers.pattern_scores",
    "headscope.analyzers.activation_patching",
    "headscope.analyzers.attribution_patching",
    "headscope.analyzers.path_patching",
    "headscope.analyzers.direct_logit_attribution",
    "headscope.analyzers.successor_heads",
    "headscope.analyzers.copying_heads",
    "headscope.analyzers.echo_induction",
    "headscope.analyzers.retrieval_heads",
    "headscope.analyzers.logit_lens",
    "headscope.analyzers.maps",
    "headscope.analyzers.ships",
    "headscope.analyzers.sahara",
    "headscope.analyzers.trained_lens",
    "headscope.analyzers.select_and_copy",
)


@dataclass(frozen=True)
class AnalyzerInfo:
    """A registered analyzer."""

    name: str
    fn: Callable[..., Any]
    summary: str
    tasks: tuple[str, ...]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shard: Any = None  # a headscope.scale.spec.ShardSpec for sweeps that split into shards

    def options(self) -> list[str]:
        """Keyword options the analyzer accepts (beyond model and task); ``preset`` if it has presets."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        names = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        return [*names, "preset"] if self.presets and "preset" not in names else names

    def coerce(self, options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """``options`` converted to the analyzer's annotations (:mod:`headscope.params`); a value
        that does not fit is a one-line error. ``preset`` is text."""
        from headscope.params import coerce_all

        return coerce_all(self.fn, options, f"{where}analyzer '{self.name}' option", extra={"preset": str})

    def expand_preset(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        """``options`` with ``preset=NAME`` replaced by the preset's options (explicit ones win).

        Returns:
            ``(options to call the analyzer with, preset name or None, the options the preset set)``.
        """
        opts = dict(options)
        name = opts.pop("preset", None)
        if name is None:
            return opts, None, {}
        if name not in self.presets:
            known = ", ".join(self.presets) or "none"
            raise HeadscopeError(
                f"analyzer '{self.name}' has no preset {name!r}.{suggest(str(name), self.presets)} Presets: {known}."
            )
        applied = {k: v for k, v in self.presets[name].items() if k not in opts}
        return {**self.presets[name], **opts}, str(name), applied


ANALYZERS: dict[str, AnalyzerInfo] = {}


def register_analyzer(
    name: str,
    summary: str,
    tasks: tuple[str, ...] = (),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    shard: Any = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` under ``name``.

    Args:
        tasks: compatible tasks (empty = any).
        presets: named option sets, e.g. ``{"paper": {"eps": 1e-4}}``; every key must be an
            option of ``fn``.
        shard: a :class:`headscope.scale.spec.ShardSpec`: how the sweep splits into independent
            units for ``--shard I/N`` and torch.distributed ranks (see docs/scaling.md).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = AnalyzerInfo(name, fn, summary, tuple(tasks), dict(presets or {}), shard)
        accepted = set(info.options())
        unknown_shard = sorted(set(getattr(shard, "options", ())) - accepted)
        if unknown_shard:
            raise TypeError(f"the shard spec of analyzer {name!r} sets unknown options {unknown_shard}")
        for preset, values in info.presets.items():
            unknown = sorted(set(values) - accepted)
            if unknown:
                raise TypeError(f"preset {preset!r} of analyzer {name!r} sets unknown options {unknown}")
        ANALYZERS[name] = info
        return fn

    return deco


def load_builtin_analyzers() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_analyzer(name: str) -> AnalyzerInfo:
    """Look up an analyzer, with close-name suggestions on a miss."""
    load_builtin_analyzers()
    if name not in ANALYZERS:
        raise HeadscopeError(
            f"unknown analyzer '{name}'.{suggest(name, ANALYZERS)} Analyzers: "
            f"{', '.join(sorted(ANALYZERS))} (see `headscope tasks`)."
        )
    return ANALYZERS[name]


def run_analyzer(name: str, model: Any, task: Any, **options: Any) -> Any:
    """Run a registered analyzer, checking its options (names, then types against the analyzer's
    annotations: see :mod:`headscope.params`) and task first."""
    info = get_analyzer(name)
    allowed = info.options()
    reject_unknown(f"analyzer '{name}'", options, allowed)
    task_name = getattr(task, "name", None)
    if info.tasks and task_name not in info.tasks:
        raise HeadscopeError(
            f"analyzer '{name}' does not run on task '{task_name}': it runs on {', '.join(info.tasks)}."
        )
    call, preset, applied = info.expand_preset(info.coerce(options))
    result = info.fn(model, task, **call)
    if hasattr(result, "provenance"):
        prov = dict(result.provenance)
        prov.setdefault("world_size", 1)  # one process (a shard or merge overwrites it: headscope.scale)
        if preset is not None:
            prov["preset"] = preset
            prov["preset_options"] = applied
        result.provenance = prov
    return result
