"""Approach 2: IsoFLOP profiles, and bootstrap intervals for it.

Runs are grouped by budget (given labels, or budgets equal within a relative tolerance,
:func:`isoflop_groups`); per budget a parabola of loss against log N is fitted and its
minimum taken (``N_opt``, ``L_min``; ``D_opt = C / (6 N_opt)``); then ``N_opt = k_n C**a``
and ``D_opt = k_d C**b`` by least squares in log-log (:func:`fit_approach2`).

:func:`bootstrap_approach2` is a residual bootstrap of those parabolas: each budget's
parabola of loss against log N is fitted, the residuals of every budget are pooled, and
each resample adds residuals drawn with replacement from the pool to the fitted losses, at
the same runs, and refits the whole of approach 2 (parabolas, vertices, the power laws in C).

Why residuals and not runs: the sizes of an IsoFLOP budget are chosen by design, not
drawn from a population, and there are few of them (3-7 per budget in a small sweep).
Resampling runs within a budget changes the design: duplicated sizes, often fewer than
the parabola's 3 distinct sizes, vertices pushed outside the sampled range, so many
resamples fail or drop budgets and the interval describes the resampling more than the
noise.  Resampling residuals keeps the design and varies only the measured losses,
which is what a rerun with other seeds would vary.  The residuals are leverage-adjusted
(r_i / sqrt(1 - h_ii), h the hat matrix of the budget's parabola; a budget with exactly 3
sizes has no residual degrees of freedom and adds none) and centred; they are pooled over
budgets because one budget has too few to resample on its own, which assumes the loss
noise is about the same at every budget.  The parabola's lack of fit is resampled as if
it were noise, which widens the intervals rather than narrowing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.errors import UsageError
from scaling.laws.bootstrap import percentile_interval
from scaling.laws.law import exponent_reasons, power_law_fit
from scaling.laws.record import JsonRecord

__all__ = [
    "IsoFlopMinimum",
    "SkippedBudget",
    "IsoFlopFit",
    "Approach2Bootstrap",
    "isoflop_groups",
    "approach2_problem",
    "fit_approach2",
    "bootstrap_approach2",
    "parabola_residuals",
]

MIN_SIZES = 3
"""Distinct model sizes a budget needs for its parabola."""


def isoflop_groups(C, budgets=None, rtol: float = 0.1):
    """Group runs into IsoFLOP budgets.

    With ``budgets`` (a per-run label, e.g. a ``budget`` column) runs with equal labels
    form a group and the label (as a float) is its budget; runs whose label is NaN get
    label -1 (in no group).  Otherwise runs are sorted by
    C and a new group starts whenever C exceeds the group's smallest C by more than the
    relative tolerance ``rtol``; the group's budget is the geometric mean of its C.
    Returns (labels (n,) ints, budget per group (G,)) with budgets ascending.
    """
    C = np.asarray(C, dtype=np.float64).ravel()
    if budgets is not None:
        b = np.asarray(budgets, dtype=np.float64).ravel()
        known = np.isfinite(b)
        values, inv = np.unique(b[known], return_inverse=True)
        labels = np.full(b.size, -1, dtype=np.int64)
        labels[known] = inv
        return labels, values
    if not rtol >= 0:
        raise UsageError(f"budget tolerance must be >= 0, got {rtol}")
    order = np.argsort(C, kind="stable")
    labels = np.empty(C.size, dtype=np.int64)
    g, start = -1, None
    for i in order:
        if start is None or C[i] > start * (1 + rtol):
            g += 1
            start = C[i]
        labels[i] = g
    values = np.array([math.exp(np.mean(np.log(C[labels == j]))) for j in range(g + 1)])
    return labels, values


def approach2_problem(
    N, C, budgets=None, rtol: float = 0.1, *, min_budgets: int = 2, min_sizes: int = MIN_SIZES
) -> str | None:
    """Why approach 2 cannot run on these runs (too few budgets with enough sizes), found
    without fitting; None when it can."""
    labels, values = isoflop_groups(C, budgets, rtol)
    N = np.asarray(N, dtype=np.float64).ravel()
    usable = sum(np.unique(N[labels == j]).size >= min_sizes for j in range(values.size))
    if usable < min_budgets:
        return (
            f"approach 2 needs at least {min_budgets} IsoFLOP budgets with >= {min_sizes} model sizes each; "
            f"found {usable} of {values.size} budgets"
            + ("" if budgets is not None else f" (runs grouped by C within {rtol:g}; see --budget-col)")
        )
    return None


@dataclass(frozen=True)
class IsoFlopMinimum(JsonRecord):
    """The minimum of one budget's parabola of loss against log N."""

    C: float
    N_opt: float
    L_min: float
    n_runs: int
    parabola: tuple[float, float, float]  # (p2, p1, p0): L = p2 x^2 + p1 x + p0, x = log N

    @property
    def D_opt(self) -> float:
        return float(self.C / (6 * self.N_opt))

    def to_dict(self) -> dict:
        return {
            "C": self.C,
            "N_opt": self.N_opt,
            "D_opt": self.D_opt,
            "L_min": self.L_min,
            "n_runs": self.n_runs,
            "parabola": list(self.parabola),
        }


@dataclass(frozen=True)
class SkippedBudget(JsonRecord):
    """A budget whose parabola gave no usable minimum, and why."""

    C: float
    reason: str

    def to_dict(self) -> dict:
        return {"C": self.C, "reason": self.reason}


@dataclass(frozen=True)
class IsoFlopFit(JsonRecord):
    """Approach 2: per-budget minima and the power laws N_opt = k_n C^a, D_opt = k_d C^b."""

    a: float
    b: float
    k_n: float
    k_d: float
    budgets_given: bool  # budgets from labels, else grouped by C within budget_tol
    budget_tol: float
    minima: tuple[IsoFlopMinimum, ...]
    skipped: tuple[SkippedBudget, ...]
    degenerate_reasons: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        return bool(self.degenerate_reasons)

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "k_n": self.k_n,
            "k_d": self.k_d,
            "budgets": "given" if self.budgets_given else "grouped by C",
            "budget_tol": self.budget_tol,
            "minima": [m.to_dict() for m in self.minima],
            "skipped": [s.to_dict() for s in self.skipped],
            "degenerate": self.degenerate,
            "degenerate_reasons": list(self.degenerate_reasons),
        }


def fit_approach2(N, L, C, *, budgets=None, rtol: float = 0.1, min_runs: int = MIN_SIZES) -> IsoFlopFit:
    """IsoFLOP profiles: per budget a parabola of L against log N, its minimum, then
    N_opt = k_n C^a and D_opt = k_d C^b (D_opt = C / (6 N_opt)).

    Budgets with fewer than ``min_runs`` distinct N, a parabola without a minimum, or a
    minimum outside the budget's sampled N range are listed under ``skipped``.
    """
    N = np.asarray(N, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    C = np.asarray(C, dtype=np.float64).ravel()
    labels, values = isoflop_groups(C, budgets, rtol)
    minima, skipped = [], []
    for j, cb in enumerate(values):
        sel = labels == j
        lnj, lj = np.log(N[sel]), L[sel]
        if np.unique(lnj).size < min_runs:
            skipped.append(SkippedBudget(float(cb), f"{np.unique(lnj).size} distinct N < {min_runs}"))
            continue
        p2, p1, p0 = np.polyfit(lnj, lj, 2)
        if not p2 > 0:
            skipped.append(SkippedBudget(float(cb), "parabola has no minimum"))
            continue
        x = -p1 / (2 * p2)
        if not lnj.min() <= x <= lnj.max():
            skipped.append(SkippedBudget(float(cb), "minimum outside the sampled N range"))
            continue
        minima.append(
            IsoFlopMinimum(
                C=float(cb),
                N_opt=math.exp(x),
                L_min=float(p0 + p1 * x + p2 * x * x),
                n_runs=int(sel.sum()),
                parabola=(float(p2), float(p1), float(p0)),
            )
        )
    if len(minima) < 2:
        raise UsageError(
            f"approach 2 needs at least 2 IsoFLOP budgets with a loss minimum, found {len(minima)} "
            f"(of {len(values)} budgets; skipped: {[s.reason for s in skipped]})"
        )
    cs = [m.C for m in minima]
    k_n, a = power_law_fit(cs, [m.N_opt for m in minima])
    k_d, b = power_law_fit(cs, [m.D_opt for m in minima])
    return IsoFlopFit(
        a=a,
        b=b,
        k_n=k_n,
        k_d=k_d,
        budgets_given=budgets is not None,
        budget_tol=float(rtol),
        minima=tuple(minima),
        skipped=tuple(skipped),
        degenerate_reasons=tuple(exponent_reasons(a, "approach 2")),
    )


@dataclass(frozen=True)
class Approach2Bootstrap(JsonRecord):
    """Approach-2 refits of residual resamples.

    ``a``, ``b``: (K,) exponents of N_opt and D_opt in C; ``n_opt``: (K, G) each budget's
    vertex (NaN where that resample's parabola had no minimum inside the sampled range);
    ``budgets``: (G,) the budgets of the full-data fit's minima.
    """

    a: np.ndarray
    b: np.ndarray
    n_opt: np.ndarray
    budgets: np.ndarray
    level: float
    seed: int
    n_failed: int
    method: str = "residual"

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval of ``a`` or ``b``."""
        lo, hi = percentile_interval(getattr(self, name), self.level)
        return float(lo), float(hi)

    def n_opt_interval(self, j: int) -> tuple[float, float]:
        """Percentile interval of budget j's N_opt over the resamples where it had a minimum."""
        v = self.n_opt[:, j]
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan"), float("nan")
        lo, hi = percentile_interval(v, self.level)
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        """``{"ci_level", "ci": {"a", "b"}, "budgets": [{"C", "N_opt": [lo, hi], "D_opt":
        [lo, hi], "n_no_minimum"}], "bootstrap": {"n_resamples", "seed", "method",
        "n_failed"}}``."""
        per = []
        for j, c in enumerate(self.budgets):
            lo, hi = self.n_opt_interval(j)
            per.append(
                {
                    "C": float(c),
                    "N_opt": [lo, hi],
                    "D_opt": [float(c / (6 * hi)), float(c / (6 * lo))],
                    "n_no_minimum": int(np.sum(~np.isfinite(self.n_opt[:, j]))),
                }
            )
        return {
            "ci_level": self.level,
            "ci": {"a": list(self.interval("a")), "b": list(self.interval("b"))},
            "budgets": per,
            "bootstrap": {
                "n_resamples": int(self.a.size + self.n_failed),
                "seed": self.seed,
                "method": self.method,
                "n_failed": self.n_failed,
            },
        }


def parabola_residuals(N, L, labels, n_groups: int, min_runs: int = 3):
    """Fitted losses and pooled leverage-adjusted, centred residuals of each group's
    parabola of L against log N (groups with fewer than ``min_runs`` distinct N are left
    as they are: fitted = L, no residuals).  Returns (fitted (n,), residuals (m,))."""
    fitted = np.array(L, dtype=np.float64)
    pool = []
    for j in range(n_groups):
        idx = np.flatnonzero(labels == j)
        x = np.log(N[idx])
        if np.unique(x).size < min_runs:
            continue
        X = np.vander(x, 3)
        coef, *_ = np.linalg.lstsq(X, L[idx], rcond=None)
        fitted[idx] = X @ coef
        h = np.einsum("ij,ji->i", X, np.linalg.pinv(X))  # diag of the hat matrix X (X'X)^-1 X'
        free = h < 1 - 1e-9
        pool.append((L[idx] - fitted[idx])[free] / np.sqrt(1 - h[free]))
    res = np.concatenate(pool) if pool else np.zeros(0)
    return fitted, res - res.mean() if res.size else res


def bootstrap_approach2(
    N,
    L,
    C,
    fit: IsoFlopFit | None = None,
    n_resamples: int = 1000,
    *,
    budgets=None,
    rtol: float = 0.1,
    seed: int = 0,
    level: float = 0.95,
    min_runs: int = 3,
) -> Approach2Bootstrap:
    """Residual-bootstrap intervals for approach 2's a, b and each budget's N_opt.

    ``fit`` is :func:`fit_approach2`'s result on the same runs (computed
    when not given); ``budgets``/``rtol`` group the runs as there.  A resample whose
    parabolas leave fewer than 2 budgets with a minimum counts in ``n_failed``.
    """
    N = np.asarray(N, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    C = np.asarray(C, dtype=np.float64).ravel()
    if n_resamples < 1:
        raise UsageError(f"approach 2's bootstrap needs at least 1 resample, got {n_resamples}")
    percentile_interval(np.zeros(2), level)  # validates level
    if fit is None:
        fit = fit_approach2(N, L, C, budgets=budgets, rtol=rtol, min_runs=min_runs)
    labels, values = isoflop_groups(C, budgets, rtol)
    per_run_budget = np.where(labels >= 0, values[np.maximum(labels, 0)], np.nan)
    fitted, res = parabola_residuals(N, L, labels, values.size, min_runs)
    if res.size == 0:
        raise UsageError(
            "approach 2's bootstrap needs a budget with more distinct sizes than the parabola's 3 "
            "coefficients (no residuals to resample)"
        )
    used = np.zeros(N.size, dtype=bool)
    for j in range(values.size):
        sel = labels == j
        used |= sel & (np.unique(np.log(N[sel])).size >= min_runs)
    cs = np.array([m.C for m in fit.minima])
    rng = np.random.default_rng(seed)
    a, b, n_opt = [], [], []
    n_failed = 0
    for _ in range(n_resamples):
        Ls = L.copy()
        Ls[used] = fitted[used] + rng.choice(res, size=int(used.sum()), replace=True)
        try:
            r = fit_approach2(N, Ls, C, budgets=per_run_budget, min_runs=min_runs)
        except UsageError:  # fewer than 2 budgets kept a minimum in this resample
            n_failed += 1
            continue
        a.append(r.a)
        b.append(r.b)
        got = {m.C: m.N_opt for m in r.minima}
        n_opt.append([got.get(float(c), np.nan) for c in cs])
    if not a:
        raise UsageError(f"approach 2's bootstrap: all {n_resamples} resamples failed (fewer than 2 minima)")
    return Approach2Bootstrap(
        a=np.array(a),
        b=np.array(b),
        n_opt=np.array(n_opt, dtype=np.float64).reshape(len(a), cs.size),
        budgets=cs,
        level=float(level),
        seed=int(seed),
        n_failed=n_failed,
    )
