"""Typed, ranged dataclass fields: their declaration, the check of a dataclass's values, and
the parsing of a field's value from a YAML scalar or command-line text.

A field is declared with :func:`ranged` (a default, its help and optional bounds); a frozen
dataclass calls :func:`check_fields` in ``__post_init__``; :func:`parse_value` turns text or a
YAML scalar into the field's type, exactly (an integer never passes through a float). Every
problem is a :class:`scaling.errors.UsageError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import field
from decimal import Decimal, InvalidOperation
from typing import Any

from scaling.errors import UsageError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # every integer field fits a signed 64-bit integer
FLOAT_EXACT_INT = 2**53  # a float from here on may already have rounded the integer it was written as


def ranged(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field: its default, its documentation (``metadata["help"]``) and its allowed
    range (checked, with its type and, for floats, finiteness, by :func:`check_fields`)."""
    return field(default=default, metadata={"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> type:
    """The declared type of a dataclass field (annotations are strings under postponed evaluation)."""
    return _hints(cls)[name]


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(m: dict) -> str:
    lo = f"[{_num(m['ge'])}" if m["ge"] is not None else f"({_num(m['gt'])}" if m["gt"] is not None else None
    hi = f"{_num(m['le'])}]" if m["le"] is not None else f"{_num(m['lt'])})" if m["lt"] is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]  # type: ignore[index]


def check_fields(obj: Any, section: str) -> None:
    """Every field of a frozen dataclass has its declared type (bool, an int within int64, a
    finite float, str) and lies in its declared range (:func:`ranged`); errors name the field as
    ``section.field``. Integers and reals of other types (numpy scalars) are stored as Python
    ``int``/``float``. Meant for ``__post_init__``."""
    for f in dataclasses.fields(obj):
        typ, v, key = _hints(type(obj))[f.name], getattr(obj, f.name), f"{section}.{f.name}"
        if typ is bool:
            _check(isinstance(v, bool), f"{key} must be true or false, got {show(v)}")
            continue
        if typ is str:
            _check(isinstance(v, str), f"{key} must be a string, got {show(v)}")
            continue
        if typ is int:
            _check(
                isinstance(v, numbers.Integral) and not isinstance(v, bool), f"{key} must be an integer, got {show(v)}"
            )
            v = int(v)
            _check(INT64_MIN <= v <= INT64_MAX, f"{key} is out of the 64-bit integer range, got {show(v)}")
        else:
            _check(isinstance(v, numbers.Real) and not isinstance(v, bool), f"{key} must be a number, got {show(v)}")
            try:
                v = float(v)
            except OverflowError:
                raise UsageError(f"{key} is out of the floating-point range, got {show(v)}") from None
            _check(math.isfinite(v), f"{key} must be a finite number, got {v}")
        object.__setattr__(obj, f.name, v)
        m = f.metadata
        ok = (
            (m.get("ge") is None or v >= m["ge"])
            and (m.get("gt") is None or v > m["gt"])
            and (m.get("le") is None or v <= m["le"])
            and (m.get("lt") is None or v < m["lt"])
        )
        _check(ok, f"{key} must be {_range_text(m)}, got {v}")


def show(v: Any, limit: int = 60) -> str:
    """A value for an error message: short scalars as repr, containers by their type."""
    if v is None:
        return "null"
    if isinstance(v, (str, int, float, bool)):
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            return f"an integer of {v.bit_length()} bits"
        r = repr(v)
        return r if len(r) <= limit else r[: limit - 3] + "..."
    return f"a {type(v).__name__}"


_SCALARS = (str, bool, int, float)
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _parse_int(value: Any, key: str) -> int:
    """An integer from a YAML scalar or command-line text, exactly: "2e6" and 2000000.0 are
    2000000, "2.5", "inf" and a float past 2**53 (already rounded) are refused."""
    bad = f"--{key} expects an integer, got {show(value)}"
    if isinstance(value, bool):
        raise UsageError(bad)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise UsageError(bad)
        if abs(value) >= FLOAT_EXACT_INT:
            raise UsageError(
                f"--{key}: {value!r} is a float of 2**53 or more, which may have rounded the "
                f"integer meant; write the integer out in full"
            )
        return int(value)
    try:
        d = Decimal(value.strip())  # exact, unlike float(): "12345678901234567891" keeps every digit
    except InvalidOperation:
        raise UsageError(bad) from None
    if not d.is_finite():
        raise UsageError(bad)
    if d.adjusted() > 19 or not INT64_MIN <= d <= INT64_MAX:  # adjusted(): the exponent of the leading digit
        raise UsageError(f"--{key} is out of the 64-bit integer range, got {show(value)}")
    n = int(d)
    if n != d:
        raise UsageError(bad)
    return n


def parse_value(value: Any, typ: type, key: str) -> Any:
    """A config value of type ``typ`` from a YAML scalar or command-line text. Containers and
    values of other types are a UsageError; ranges are checked by the dataclasses."""
    if value is not None and not isinstance(value, _SCALARS):
        raise UsageError(f"--{key} expects {_WORDS[typ]}, got {show(value)}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--{key} expects true or false, got {show(value)}")
    if typ is int:
        if value is None:
            raise UsageError(f"--{key} expects an integer, got null")
        return _parse_int(value, key)
    if typ is float:
        if value is None or isinstance(value, bool):
            raise UsageError(f"--{key} expects a number, got {show(value)}")
        try:
            return float(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise UsageError(f"--{key} expects a number, got {show(value)}") from None
        except OverflowError:
            raise UsageError(f"--{key} is out of the floating-point range, got {show(value)}") from None
    return "" if value is None else str(value)
