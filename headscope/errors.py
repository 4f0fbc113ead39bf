"""User-facing errors.

Every mistake a user can make (unknown model, task or analyzer; a head out of range; an
answer that is not a single token; weights missing offline; ...) raises
:class:`HeadscopeError`. Its message is one line that says what is wrong and how to fix it.
The CLI prints that line and exits non-zero without a traceback; Python callers get a normal
exception they can catch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class HeadscopeError(Exception):
    """A user error with a one-line message that names the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    quoted = ", ".join(f"'{c}'" for c in close)
    return f" Did you mean {quoted}?"


def check_choice(name: str, value: str, choices: Iterable[str], described: str = "") -> str:
    """``value`` itself if it is one of ``choices``, else a one-line HeadscopeError
    ``"{name} must be {described}; got '{value}'."``; ``described`` defaults to the choices
    joined as ``a, b or c``."""
    options = list(choices)
    if value not in options:
        text = described or (", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else "".join(options))
        raise HeadscopeError(f"{name} must be {text}; got '{value}'.")
    return value


def reject_unknown(owner: str, given: Iterable[str], allowed: Sequence[str], noun: str = "option") -> None:
    """One-line error for the first name in ``given`` that ``owner`` (e.g. "analyzer 'ships'")
    does not accept, with close-name suggestions and the accepted names."""
    bad = [k for k in given if k not in allowed]
    if bad:
        raise HeadscopeError(
            f"{owner} has no {noun} {bad[0]!r}.{suggest(bad[0], allowed)} "
            f"{noun.capitalize()}s: {', '.join(allowed) or 'none'}."
        )


class HeadscopeWarning(UserWarning):
    """A warning from headscope; the CLI prints it as one ``warning: ...`` line."""
