"""The records of a fitted law's diagnostics: the :class:`Thresholds` each check compares
with, one :class:`Check`, and the :class:`Verdict` over all of them.  The checks themselves are
:mod:`scaling.laws.checks`'s; the report and the fit's JSON read these records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["LEAST_SQUARES_DELTA", "Thresholds", "Check", "Verdict", "compared", "unevaluated", "verdict"]

LEAST_SQUARES_DELTA = 1e6
"""A Huber delta no log-loss residual reaches: the objective is then least squares."""


@dataclass(frozen=True)
class Thresholds:
    """The numbers each check compares with (the defaults are the project's criteria)."""

    gain_tol: float = 0.01  # nats per doubling of D
    d_merge_factor: float = 2**0.5  # token counts of one size closer than this are one point
    e_min: float = 0.2
    exponent_range: tuple[float, float] = (0.1, 1.0)
    a_width_max: float = 0.25
    deltas: tuple[float, ...] = (1e-3, 1e-2, LEAST_SQUARES_DELTA)
    delta_shift_max: float = 0.05
    count_shift_max: float = 0.1
    agreement_max: float = 0.15
    mean_error_max: float = 0.01
    worst_error_max: float = 0.02
    n_opt_ratio_max: float = 1.5


_RELATIONS = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "in": lambda v, t: t[0] <= v <= t[1],
}


@dataclass(frozen=True)
class Check:
    """One diagnostic: ``passed`` is ``value <relation> threshold`` when ``evaluated``."""

    name: str
    passed: bool
    value: float
    threshold: float | tuple[float, float] | None
    relation: str
    message: str
    evaluated: bool = True
    details: Mapping[str, object] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        thr = list(self.threshold) if isinstance(self.threshold, tuple) else self.threshold
        return {
            "name": self.name,
            "passed": self.passed,
            "evaluated": self.evaluated,
            "value": None if not math.isfinite(self.value) else self.value,
            "threshold": thr,
            "relation": self.relation,
            "message": self.message,
            "details": dict(self.details),
        }


def compared(name: str, what: str, value: float, relation: str, threshold, details=None) -> Check:
    """The check ``value <relation> threshold``; ``what`` names the value in its message."""
    value = float(value)
    ok = bool(math.isfinite(value) and _RELATIONS[relation](value, threshold))
    thr = f"[{threshold[0]:g}, {threshold[1]:g}]" if relation == "in" else f"{threshold:g}"
    return Check(
        name,
        ok,
        value,
        threshold,
        relation,
        f"{what} = {value:.4g} {relation} {thr}: " + ("pass" if ok else "FAIL"),
        True,
        details or {},
    )


def unevaluated(name: str, relation: str, threshold, why: str) -> Check:
    """A check that could not be evaluated (it does not pass); ``why`` says what is missing."""
    return Check(name, False, float("nan"), threshold, relation, f"not evaluated: {why}", False, {})


@dataclass(frozen=True)
class Verdict:
    """All checks, and whether the law passes them all."""

    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if c.evaluated and not c.passed)

    @property
    def not_evaluated(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.evaluated)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def message(self) -> str:
        if self.passed:
            return f"PASS: all {len(self.checks)} diagnostics pass"
        parts = []
        if self.failed:
            parts.append(f"{len(self.failed)} failed: {', '.join(self.failed)}")
        if self.not_evaluated:
            parts.append(f"{len(self.not_evaluated)} not evaluated: {', '.join(self.not_evaluated)}")
        return "FAIL: " + "; ".join(parts or ["no diagnostics"])

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "verdict": self.message,
            "failed": list(self.failed),
            "not_evaluated": list(self.not_evaluated),
            "checks": [c.to_dict() for c in self.checks],
        }


def verdict(checks: Sequence[Check]) -> Verdict:
    """The verdict over ``checks`` (names must be unique)."""
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate check names: {names}")
    return Verdict(tuple(checks))
