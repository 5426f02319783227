"""What the fit plots draw from a fit besides its runs: approach 3's law and bootstrap
parameter samples, approach 2's bootstrap and its per-budget intervals, and the legend labels
that state an exponent with its interval.
"""

from __future__ import annotations

import math

import numpy as np

from scaling.laws.approach2 import Approach2Bootstrap
from scaling.laws.result import FitResult

__all__ = [
    "law_params",
    "has_law",
    "has_frontier",
    "boot_params",
    "approach2_bootstrap",
    "a3_label",
    "a2_label",
    "a2_vertex_ci",
]


def law_params(result: FitResult):
    """Approach 3's law as (E, A, B, alpha, beta)."""
    return result.law.params


def has_law(result: FitResult) -> bool:
    """An approach-3 fit whose parameters are all numbers (a degenerate fit may lack some)."""
    return result.law is not None and all(np.isfinite(result.law.params))


def has_frontier(result: FitResult) -> bool:
    """An approach-3 fit with a compute-optimal frontier (none when an exponent is <= 0)."""
    return has_law(result) and np.isfinite(result.law.a)


def boot_params(result: FitResult) -> tuple[np.ndarray, float] | None:
    """Approach 3's bootstrap parameter samples (K, 5) as (E, A, B, alpha, beta), and the
    interval level; None without a bootstrap of at least 2 finite samples."""
    boot = getattr(result, "bootstrap", None)
    s = getattr(boot, "samples", None)
    if s is None:
        return None
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 5:
        return None
    s = s[np.all(np.isfinite(s[:, :5]), axis=1), :5]
    return (s, float(getattr(boot, "level", 0.95))) if s.shape[0] >= 2 else None


def approach2_bootstrap(result: FitResult) -> Approach2Bootstrap | None:
    """Approach 2's residual bootstrap, when the fit made one."""
    b = getattr(result, "approach2_ci", None)
    return b if isinstance(b, Approach2Bootstrap) else None


def _ci_text(lohi) -> str:
    lo, hi = lohi
    return f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else ""


def a3_label(result: FitResult, exponent: str = "a") -> str:
    """'approach 3: a = 0.512 [0.48, 0.55]' (the interval when bootstrapped)."""
    boot = getattr(result, "bootstrap", None)
    ci = _ci_text(boot.interval(exponent)) if boot is not None and hasattr(boot, "interval") else ""
    return f"approach 3: {exponent} = {getattr(result.law, exponent):.3f}{ci}"


def a2_label(result: FitResult, exponent: str = "a") -> str:
    """'approach 2: a = 0.498 [0.46, 0.53]' (the interval when bootstrapped)."""
    b = approach2_bootstrap(result)
    ci = "" if b is None else _ci_text(b.interval(exponent))
    return f"approach 2: {exponent} = {getattr(result.isoflop, exponent):.3f}{ci}"


def a2_vertex_ci(result: FitResult) -> dict[float, tuple[float, float]]:
    """Approach 2's per-budget N_opt interval by budget C (empty without its bootstrap)."""
    b = approach2_bootstrap(result)
    if b is None:
        return {}
    return {round(math.log10(float(c)), 6): b.n_opt_interval(j) for j, c in enumerate(b.budgets)}
