"""Parsing ``-o key=value`` options and routing them to the task or the analyzer."""

from __future__ import annotations

import json
from typing import Any

from headscope.errors import HeadscopeError


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], else the string."""
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    if lowered in {"none", "null"}:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``key=value`` strings into a dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise HeadscopeError(f"option '{item}' is not KEY=VALUE: write e.g. -o seq_len=64.")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


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
