"""The values of a sweep spec read from YAML: numbers (with SI suffixes), whole numbers,
mappings with known keys, non-empty lists; each check raises a UsageError naming where in
the spec the value is. Also the SI form numbers are printed in (:func:`format_si`)."""

from __future__ import annotations

import math
from typing import Any

from scaling.errors import UsageError

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def spec_error(where: str, msg: str) -> UsageError:
    return UsageError(f"sweep spec {where}: {msg}")


def parse_number(value: Any, where: str, *, positive: bool = True) -> float:
    """A number from YAML: 1e6, 2000000, "1e6", "100K", "1.5M", "2B", "3T"."""
    if isinstance(value, bool):
        raise spec_error(where, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:
            raise spec_error(
                where, f"expected a number in the floating-point range, got an integer of {value.bit_length()} bits"
            ) from None
    elif isinstance(value, str):
        s = value.strip().replace("_", "").replace(",", "")
        mult = 1.0
        if s and s[-1].lower() in _SUFFIX:
            mult, s = _SUFFIX[s[-1].lower()], s[:-1]
        try:
            x = float(s) * mult
        except ValueError:
            raise spec_error(where, f"expected a number, got {value!r}") from None
    else:
        raise spec_error(where, f"expected a number, got {value!r}")
    if not math.isfinite(x) or (positive and x <= 0):
        raise spec_error(where, f"expected a positive number, got {value!r}")
    return x


def positive_int(value: Any, where: str) -> int:
    x = parse_number(value, where)
    if x != int(x):
        raise spec_error(where, f"expected a whole number, got {value!r}")
    return int(x)


def parse_mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict:
    """A mapping (None: an empty one) whose keys are all in ``allowed`` (None: any keys)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise spec_error(where, f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted((k for k in value if k not in allowed), key=str)
        if unknown:
            raise spec_error(where, f"unknown key {unknown[0]!r} (expected one of {sorted(allowed)})")
    return value


def parse_list(value: Any, where: str) -> list:
    """A non-empty list."""
    if not isinstance(value, list) or not value:
        raise spec_error(where, "expected a non-empty list")
    return value


def format_si(x: float) -> str:
    """``x`` to 3 significant digits with the suffix K, M, G or T (as parse_number reads it)."""
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"
