"""Bootstrap intervals for approach 2 (IsoFLOP profiles).  Pure numpy; no file I/O.

:func:`bootstrap_approach2` is a residual bootstrap of the parabolas that approach 2 fits
(:func:`scaling.laws.fit_approach2`): each budget's parabola of loss against log N is
fitted, the residuals of every budget are pooled, and each resample adds residuals drawn
with replacement from the pool to the fitted losses, at the same runs, and refits the
whole of approach 2 (parabolas, vertices, the power laws in C).

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

from dataclasses import dataclass

import numpy as np

from scaling import laws
from scaling.errors import UsageError

__all__ = ["Approach2Bootstrap", "bootstrap_approach2", "parabola_residuals"]


@dataclass(frozen=True)
class Approach2Bootstrap:
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
        lo, hi = laws.percentile_interval(getattr(self, name), self.level)
        return float(lo), float(hi)

    def n_opt_interval(self, j: int) -> tuple[float, float]:
        """Percentile interval of budget j's N_opt over the resamples where it had a minimum."""
        v = self.n_opt[:, j]
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan"), float("nan")
        lo, hi = laws.percentile_interval(v, self.level)
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
    fit: dict | None = None,
    n_resamples: int = 1000,
    *,
    budgets=None,
    rtol: float = 0.1,
    seed: int = 0,
    level: float = 0.95,
    min_runs: int = 3,
) -> Approach2Bootstrap:
    """Residual-bootstrap intervals for approach 2's a, b and each budget's N_opt.

    ``fit`` is :func:`scaling.laws.fit_approach2`'s result on the same runs (computed
    when not given); ``budgets``/``rtol`` group the runs as there.  A resample whose
    parabolas leave fewer than 2 budgets with a minimum counts in ``n_failed``.
    """
    N = np.asarray(N, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    C = np.asarray(C, dtype=np.float64).ravel()
    if n_resamples < 1:
        raise UsageError(f"approach 2's bootstrap needs at least 1 resample, got {n_resamples}")
    laws.percentile_interval(np.zeros(2), level)  # validates level
    if fit is None:
        fit = laws.fit_approach2(N, L, C, budgets=budgets, rtol=rtol, min_runs=min_runs)
    labels, values = laws.isoflop_groups(C, budgets, rtol)
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
    cs = np.array([m["C"] for m in fit["minima"]])
    rng = np.random.default_rng(seed)
    a, b, n_opt = [], [], []
    n_failed = 0
    for _ in range(n_resamples):
        Ls = L.copy()
        Ls[used] = fitted[used] + rng.choice(res, size=int(used.sum()), replace=True)
        try:
            r = laws.fit_approach2(N, Ls, C, budgets=per_run_budget, min_runs=min_runs)
        except UsageError:  # fewer than 2 budgets kept a minimum in this resample
            n_failed += 1
            continue
        a.append(r["a"])
        b.append(r["b"])
        got = {m["C"]: m["N_opt"] for m in r["minima"]}
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
