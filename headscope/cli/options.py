"""Parsing ``-o key=value`` options (routing and typing: :func:`headscope.plan.plan`)."""

from __future__ import annotations

from typing import Any

from headscope.errors import HeadscopeError
from headscope.params import parse_text
from headscope.plan import route_options as route_options  # re-exported for the CLI commands


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], else the string
    (for parameters without an annotation; annotated ones go through :mod:`headscope.params`)."""
    return parse_text(text)


def parse_options(items: list[str] | None) -> dict[str, str]:
    """Parse repeated ``key=value`` strings into a dict of raw text values.

    The text is typed later against each parameter's annotation (:func:`headscope.plan.plan`), so that
    ``heads=9.10`` stays text and ``n_prompts=2.5`` is refused rather than rounded.
    """
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise HeadscopeError(f"option '{item}' is not KEY=VALUE: write e.g. -o seq_len=64.")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise HeadscopeError(f"option '{item}' has no KEY: write e.g. -o seq_len=64.")
        out[key] = value
    return out


def check_device(device: str | None, flag: str = "--device") -> None:
    """A one-line error for a device string torch cannot parse (``auto`` is headscope's own)."""
    if device is None or device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise HeadscopeError(f"unknown device '{device}' for {flag}: use cpu, cuda, cuda:N, mps or auto.") from None


ORDER_HELP = "rank heads: abs (|score|), desc or asc (default: abs for a signed metric, one with a negative score; else desc)"


def check_order_option(order: str | None, flag: str = "--order") -> str | None:
    """``order`` checked before any work (None: the per-metric default of HeadScores.top)."""
    from headscope.results.head_scores import check_order

    return None if order is None else check_order(order, flag)
