"""A check: the support-matrix capability it belongs to, what it compares, and how."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from headscope.verify.context import Measured, VerifyContext


@dataclass(frozen=True)
class CheckSpec:
    """``fn(ctx)`` returns a :class:`Measured` or raises an :class:`~headscope.verify.outcomes.Outcome`."""

    capability: str
    name: str
    fn: Callable[[VerifyContext], Measured]
