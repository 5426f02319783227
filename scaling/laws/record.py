"""What the typed fit results share: a JSON form, read access by JSON key, and the note of an
approach that did not run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["JsonRecord", "NotRun", "finite_or_none", "json_safe"]


class JsonRecord:
    """A result whose JSON form (as written to fit.json) is ``to_dict()``.

    ``record[key]`` reads that form, so a result reads the same in code as in its JSON.
    """

    def to_dict(self) -> dict:
        raise NotImplementedError

    def __getitem__(self, key: str):
        return self.to_dict()[key]


@dataclass(frozen=True)
class NotRun(JsonRecord):
    """An approach that could not run on the input, and why; JSON ``{"not_run": reason}``."""

    reason: str

    def to_dict(self) -> dict:
        return {"not_run": self.reason}


def finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(obj):
    """``obj`` with every non-finite float (and numpy scalar) made JSON-safe: NaN and infinity
    become None (null), so that the JSON written is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
