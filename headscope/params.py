"""Task parameters and analyzer options, checked and converted against their annotations.

Values arrive as text (``-o n_prompts=8`` on the command line) or as values (a recipe's YAML,
a Python call). :func:`coerce` turns each into the type its parameter is annotated with, or
raises a one-line :class:`HeadscopeError` that names the parameter, the expected type and an
example. The converted value is what the task or analyzer receives, so provenance records it.

Rules (``T`` an annotation):

- ``int``: an integer (``8``; text ``"8"``; a float only when whole, ``8.0``); never a bool.
- ``float``: a number (text ``"0.5"``, ``"1e-3"``); never a bool.
- ``bool``: a bool (text ``true/false``, ``yes/no``, ``on/off``, ``1/0``).
- ``str``: a string (an integer is written out; a float is refused, since ``9.10`` would
  read as ``9.1``: quote it).
- ``list[T]`` / ``tuple[T, ...]``: a list, or text ``"[1, 2]"`` or ``"1,2"``.
- ``A | B``: a value that already is one of the members is kept; text tries the scalar
  members first, then lists (only text with a comma or ``[`` when ``str`` is a member) and
  ``str`` last; ``None``/``null`` text gives ``None`` when allowed.
- ``Literal[...]``: one of the listed values. Unannotated or ``Any``: unchanged.
"""

from __future__ import annotations

import inspect
import json
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from headscope.errors import HeadscopeError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}
_INT = re.compile(r"^[+-]?\d+$")


class _Mismatch(Exception):
    """The value does not fit the annotation (internal; turned into a HeadscopeError)."""


def describe(annotation: Any) -> str:
    """A reader's name for an annotation: ``an integer``, ``a list of integers or None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true/false"
    if annotation is str:
        return "text"
    if annotation is type(None):
        return "none"
    if _is_sequence(annotation):
        inner = args[0] if args else Any
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(inner, "values")
        return f"a list of {plural}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(annotation):
        names = list(dict.fromkeys(describe(a) for a in args))
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return getattr(annotation, "__name__", str(annotation))


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_sequence(annotation: Any) -> bool:
    import collections.abc

    return typing.get_origin(annotation) in (list, tuple, collections.abc.Sequence)


def _exact(value: Any, annotation: Any) -> bool:
    """Whether ``value`` already has the annotated type (no conversion needed)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, float)
    if annotation is str:
        return isinstance(value, str)
    if _is_sequence(annotation):
        return isinstance(value, tuple if typing.get_origin(annotation) is tuple else list)
    return False


def _convert(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation``; raises :class:`_Mismatch`."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if _is_union(annotation):
        return _convert_union(value, typing.get_args(annotation))
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _Mismatch
    text = value.strip() if isinstance(value, str) else None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise _Mismatch
    if annotation is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        if text is not None and _INT.match(text):
            return int(text)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, numbers.Real):
            return float(value)
        if text is not None:
            try:
                return float(text)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if _is_sequence(annotation):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        if text is not None:
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise _Mismatch from None
            else:
                value = [t.strip() for t in text.split(",")]
                if any(t == "" for t in value):
                    raise _Mismatch
        if not isinstance(value, list | tuple):
            raise _Mismatch
        items = [_convert(v, inner) for v in value]
        return tuple(items) if typing.get_origin(annotation) is tuple else items
    if typing.get_origin(annotation) is typing.Literal:
        for choice in typing.get_args(annotation):
            if value == choice or (text is not None and text == str(choice)):
                return choice
        raise _Mismatch
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    return value


def _convert_union(value: Any, members: tuple[Any, ...]) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise _Mismatch
    if isinstance(value, str):
        if type(None) in members and value.strip().lower() in _NONE:
            return None
        # text: scalar members first, then lists, plain text last ("256" is 256, "256,512" a list)
        listy = "," in value or value.strip().startswith("[")
        for m in sorted((m for m in members if m is not str and m is not type(None)), key=_is_sequence):
            if _is_sequence(m) and str in members and not listy:
                continue  # one word stays text where text is allowed
            try:
                return _convert(value, m)
            except _Mismatch:
                pass
        if str in members:
            return value
        raise _Mismatch
    for m in members:
        if _exact(value, m):
            return _convert(value, m)
    for m in members:
        try:
            return _convert(value, m)
        except _Mismatch:
            pass
    raise _Mismatch


def coerce(name: str, value: Any, annotation: Any, where: str = "", example: Any = None) -> Any:
    """``value`` converted to ``annotation``, or a one-line error naming ``name`` and the fix.

    Args:
        name: the parameter's name (for the message).
        value: text or a value (see the module docstring).
        annotation: the parameter's resolved annotation.
        where: who owns the parameter, e.g. ``"task 'induction' parameter"`` (for the message).
        example: an example value for the message (e.g. the default).
    """
    try:
        return _convert(value, annotation)
    except (_Mismatch, RecursionError):
        pass
    owner = f"{where} " if where else ""
    hint = ""
    if annotation is str or (_is_union(annotation) and str in typing.get_args(annotation)):
        if isinstance(value, float):
            hint = " (write it as quoted text, e.g. '9.6,9.10')"
    if not hint and example is not None and example is not inspect.Parameter.empty:
        shown = ",".join(map(str, example)) if isinstance(example, list | tuple) else example
        if isinstance(shown, bool):
            shown = str(shown).lower()
        hint = f", e.g. {name}={shown}"
    raise HeadscopeError(f"{owner}{name}={value!r} must be {describe(annotation)}{hint}.")


def annotations_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``fn``'s parameters (``{}`` where they cannot be resolved)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward references: check nothing
        return {}


def parse_text(text: str) -> Any:
    """Text for an unannotated parameter: ``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True,
    ``"[1,2]"`` -> [1, 2], ``"none"`` -> None, else the text."""
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    if lowered in _NONE:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def coerce_all(
    fn: Callable[..., Any], values: Mapping[str, Any], where: str, skip: Callable[[Any], bool] | None = None,
    extra: Mapping[str, Any] | None = None, text: bool = False,
) -> dict[str, Any]:
    """Every value of ``values`` coerced to the annotation of ``fn``'s parameter of that name.

    ``skip(value)`` true leaves a value as it is (e.g. a recipe's head selector, resolved
    later); ``extra`` gives annotations for names ``fn`` does not declare (e.g. ``preset``).
    Values for unannotated parameters are left as they are, or, with ``text=True`` (values
    typed on the command line), read with :func:`parse_text`.
    """
    hints = {**dict(extra or {}), **annotations_of(fn)}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    out = {}
    for key, value in values.items():
        if skip is not None and skip(value):
            out[key] = value
            continue
        if text and key not in hints and isinstance(value, str):
            out[key] = parse_text(value)
            continue
        default = params[key].default if key in params else None
        out[key] = coerce(key, value, hints.get(key, Any), where, default)
    return out
