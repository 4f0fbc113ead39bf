"""Parsing ``-o key=value`` options, routing them to the task or the analyzer, and typing them."""

from __future__ import annotations

from typing import Any

from headscope.errors import HeadscopeError
from headscope.params import annotations_of, parse_text


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], else the string
    (for parameters without an annotation; annotated ones go through :mod:`headscope.params`)."""
    return parse_text(text)


def parse_options(items: list[str] | None) -> dict[str, str]:
    """Parse repeated ``key=value`` strings into a dict of raw text values.

    The text is typed later against each parameter's annotation (:func:`typed`), so that
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


def typed(info: Any, values: dict[str, str]) -> dict[str, Any]:
    """Command-line text typed for a task (:class:`TaskInfo`) or analyzer (:class:`AnalyzerInfo`):
    annotated parameters are converted (a misfit is a one-line error), others read with
    :func:`parse_value`."""
    fn = getattr(info, "factory", None) or info.fn
    hints = annotations_of(fn)
    loose = {k: parse_value(v) for k, v in values.items() if k not in hints and k != "preset"}
    strict = info.coerce({k: v for k, v in values.items() if k not in loose})
    return {k: loose[k] if k in loose else strict[k] for k in values}


def route_options(
    options: dict[str, Any], task_params: list[str], analyzer_options: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split options into (task params, analyzer options); unknown keys are a one-line error."""
    from headscope.errors import suggest

    task_kw: dict[str, Any] = {}
    analyzer_kw: dict[str, Any] = {}
    for key, value in options.items():
        if key in task_params:
            task_kw[key] = value
        elif key in analyzer_options:
            analyzer_kw[key] = value
        else:
            known = [*task_params, *analyzer_options]
            raise HeadscopeError(
                f"unknown option '{key}'.{suggest(key, known)} Task parameters: "
                f"{', '.join(task_params) or 'none'}; analyzer options: {', '.join(analyzer_options) or 'none'}."
            )
    return task_kw, analyzer_kw


def check_device(device: str | None, flag: str = "--device") -> None:
    """A one-line error for a device string torch cannot parse (``auto`` is headscope's own)."""
    if device is None or device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise HeadscopeError(f"unknown device '{device}' for {flag}: use cpu, cuda, cuda:N, mps or auto.") from None
