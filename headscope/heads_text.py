"""Head lists written as text (``"9.6,10.0"``), checked before any model is loaded.

:meth:`headscope.models.Model.parse_heads` also checks each head against the model's layers
and heads; this module checks only the syntax, so that a typo fails at once instead of after a
model load.
"""

from __future__ import annotations

import re

from headscope.errors import HeadscopeError

Head = tuple[int, int]
_HEAD = re.compile(r"^\s*(\d+)\s*\.\s*(\d+)\s*$")
_LAYER = re.compile(r"^\s*(\d+)\s*\.\s*\*\s*$")


def parse_head_list(text: str, flag: str = "--heads", whole_layers: bool = False) -> list[Head]:
    """``"9.6,10.0"`` -> ``[(9, 6), (10, 0)]``; a one-line error naming ``flag`` for bad syntax.

    With ``whole_layers``, ``"L.*"`` (every head of layer ``L``) is accepted and returned as
    ``(L, -1)``; the model expands it (e.g. :func:`headscope.analyzers.trained_lens.expand_heads`).
    """
    heads: list[Head] = []
    for item in str(text).split(","):
        if not item.strip():
            continue
        layer = _LAYER.match(item) if whole_layers else None
        if layer is not None:
            heads.append((int(layer.group(1)), -1))
            continue
        m = _HEAD.match(item)
        if m is None:
            raise HeadscopeError(f"cannot parse head '{item.strip()}' in {flag.rstrip('=')}: write heads as LAYER.HEAD, "
                                 f"e.g. {flag}{'' if flag.endswith('=') else ' '}9.6,10.0.")
        heads.append((int(m.group(1)), int(m.group(2))))
    if not heads:
        raise HeadscopeError(f"no heads in {flag.rstrip('=')} '{text}': write heads as LAYER.HEAD, "
                             f"e.g. {flag}{'' if flag.endswith('=') else ' '}9.6,10.0.")
    return heads
