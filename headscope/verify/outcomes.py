"""Keep headscope's side and the reference's side of a check apart when something goes wrong.

A check calls headscope through :func:`ours` and builds its reference through
:func:`reference`. Then:

- headscope raising its one-line :class:`~headscope.errors.HeadscopeError` becomes
  :class:`Refused` (the check is ``REFUSED``: the documented safe outcome);
- headscope raising anything else becomes :class:`Crashed` (the check ``FAIL``\\ s);
- the reference failing, or a raw module that cannot be found, becomes :class:`NotChecked`
  (the check is ``NOT CHECKED``, never a pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from headscope.errors import HeadscopeError

T = TypeVar("T")


class Outcome(Exception):
    """A check ended without a comparison; the message is its one-line reason."""


class Refused(Outcome):
    """headscope refused with a one-line HeadscopeError."""


class Crashed(Outcome):
    """headscope raised an unexpected error."""


class NotChecked(Outcome):
    """The raw reference could not be built on this model."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ours(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call headscope; a HeadscopeError becomes :class:`Refused`, anything else :class:`Crashed`."""
    try:
        return fn(*args, **kwargs)
    except Outcome:
        raise
    except HeadscopeError as exc:
        raise Refused(one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any crash of headscope is a failure to report
        raise Crashed(f"headscope raised {type(exc).__name__}: {one_line(exc)}") from None


def reference(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Build a reference value; any error becomes :class:`NotChecked`."""
    try:
        return fn(*args, **kwargs)
    except Outcome:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken reference is "not checked", never a pass
        raise NotChecked(f"reference failed ({type(exc).__name__}: {one_line(exc)})") from None
