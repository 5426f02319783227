"""Approach 1 on annealed endpoints: the lower envelope of loss against compute, read only
where the learning rate has decayed and only where the sizes bracket the optimum.
Pure numpy; no file I/O.

Hoffmann et al.'s approach 1 takes, at each FLOP count, the lowest loss any run reaches.
Read from raw training curves of a small sweep (:func:`scaling.laws.fit_approach1`) it has
three biases of method, each present even on ideal curves from a known law:

- a point in the middle of a run has not had its learning rate decayed, so its loss is
  above what an annealed run of that length reaches;
- below the smallest model's optimal compute (or above the largest's) the lowest curve
  is the smallest (largest) model whatever the true optimum is, so the envelope is
  clamped at the ends of the size range;
- with a handful of sizes the lowest curve's N is a step function of C, whose log-log
  slope depends on where the steps fall.

:func:`fit_approach1_endpoints` removes each by construction:

- its input is annealed endpoints only, one (N, C, L) per point: a cosine run's final
  evaluated loss, or each cooldown endpoint of a warmup-stable-decay run (a cooldown
  branch is one endpoint, like a run).  A size's endpoints, sorted by C and joined
  linearly in log C, are its annealed curve;
- at each C of a log-spaced grid, the sizes whose annealed curve covers C are ranked by
  loss; C is used only where the best of them is neither the smallest nor the largest
  (the optimum is bracketed);
- there, N_opt is the vertex of the parabola in log N through the best size and its two
  neighbours (``refine="parabola"``, the default), as approach 2 reads an IsoFLOP
  profile; ``refine="none"`` keeps Hoffmann's plain argmin.

Then ``N_opt = k_n C**a`` and ``D_opt = C / (6 N_opt) = k_d C**b`` by least squares in
log-log over the bracketed grid points.  Joining endpoints linearly in log C puts the
curve on the chord of a convex function, slightly above it; at a given C every size's
chord error has the same sign and similar size, so the ranking and the vertex move
little.  ``tests/test_laws.py`` recovers a within 0.03 on Chinchilla's law with a small
sweep's sizes and budgets, as IsoFLOP runs and as cooldowns at shared token counts.
"""

from __future__ import annotations

import math

import numpy as np

from scaling.errors import UsageError
from scaling.laws import power_law_fit

__all__ = ["annealed_curves", "fit_approach1_endpoints", "REFINES"]

REFINES = ("parabola", "none")


def _endpoints(N, C, L):
    arrs = [np.asarray(v, dtype=np.float64).ravel() for v in (N, C, L)]
    if len({a.size for a in arrs}) != 1:
        raise UsageError(f"endpoints: N, C and loss have different lengths: {[a.size for a in arrs]}")
    for name, a in zip(("N", "C", "loss"), arrs):
        if not np.all(np.isfinite(a)):
            raise UsageError(f"endpoints: {int(np.sum(~np.isfinite(a)))} non-finite {name} value(s)")
        if np.any(a <= 0):
            raise UsageError(f"endpoints: {int(np.sum(a <= 0))} non-positive {name} value(s)")
    return arrs


def annealed_curves(N, C, L) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Each size's annealed curve ``(N, C ascending, loss)``, sizes ascending.

    Endpoints of one size at the same C (for example two seeds) are averaged.
    """
    N, C, L = _endpoints(N, C, L)
    curves = []
    for n in np.unique(N):
        sel = N == n
        cs, inv = np.unique(C[sel], return_inverse=True)
        ls = np.bincount(inv, weights=L[sel]) / np.bincount(inv)
        curves.append((float(n), cs, ls))
    return curves


def fit_approach1_endpoints(N, C, L, *, n_grid: int = 200, refine: str = "parabola") -> dict:
    """Approach 1 on annealed endpoints (N, C, L) (see the module docstring).

    Returns the keys of :func:`scaling.laws.fit_approach1` (``a, b, k_n, k_d, n_runs``:
    the number of sizes with an annealed curve, ``envelope``: [{"C", "N_opt", "D_opt",
    "L_min"}] over the bracketed grid points) plus ``input: "annealed endpoints"``,
    ``refine``, ``n_endpoints``, ``c_range`` (the bracketed range [lo, hi]) and
    ``grid_fraction`` (the share of the grid where the optimum is bracketed).
    UsageError when fewer than 3 sizes have 2 or more endpoints, or when the optimum is
    bracketed at fewer than 2 grid points.
    """
    if refine not in REFINES:
        raise UsageError(f"approach 1: refine must be one of {REFINES}, got {refine!r}")
    if n_grid < 2:
        raise UsageError(f"approach 1: n_grid must be >= 2, got {n_grid}")
    curves = [c for c in annealed_curves(N, C, L) if c[1].size >= 2]
    if len(curves) < 3:
        raise UsageError(
            f"approach 1 on annealed endpoints needs at least 3 model sizes with 2 or more endpoints "
            f"(different C) each, found {len(curves)}"
        )
    sizes = np.array([c[0] for c in curves])
    log_n = np.log(sizes)
    lo = min(math.log(c[1][0]) for c in curves)
    hi = max(math.log(c[1][-1]) for c in curves)
    grid = np.linspace(lo, hi, n_grid)
    loss_sg = np.full((sizes.size, n_grid), np.nan)
    for j, (_, cs, ls) in enumerate(curves):
        lc = np.log(cs)
        inside = (grid >= lc[0] - 1e-12) & (grid <= lc[-1] + 1e-12)
        loss_sg[j, inside] = np.interp(grid[inside], lc, ls)

    c_env, n_env, l_env = [], [], []
    for g in range(n_grid):
        cand = np.flatnonzero(np.isfinite(loss_sg[:, g]))  # sizes ascending
        if cand.size < 3:
            continue
        best = int(np.argmin(loss_sg[cand, g]))
        if best == 0 or best == cand.size - 1:  # clamped at the end of the size range
            continue
        if refine == "parabola":
            x_opt, l_opt = _vertex(log_n[cand[best - 1 : best + 2]], loss_sg[cand[best - 1 : best + 2], g])
            n_opt = math.exp(x_opt)
        else:
            n_opt, l_opt = sizes[cand[best]], loss_sg[cand[best], g]
        c_env.append(math.exp(grid[g]))
        n_env.append(float(n_opt))
        l_env.append(float(l_opt))
    if len(c_env) < 2:
        raise UsageError(
            "approach 1: the best model is the smallest or the largest size at every FLOP value "
            f"(fewer than 2 of {n_grid} grid points bracketed); the sizes do not straddle the optimum"
        )
    c_env, n_env = np.array(c_env), np.array(n_env)
    k_n, a = power_law_fit(c_env, n_env)
    d_env = c_env / (6 * n_env)
    k_d, b = power_law_fit(c_env, d_env)
    return {
        "a": a,
        "b": b,
        "k_n": k_n,
        "k_d": k_d,
        "n_runs": int(sizes.size),
        "envelope": [
            {"C": float(c), "N_opt": float(n), "D_opt": float(d), "L_min": float(l)}
            for c, n, d, l in zip(c_env, n_env, d_env, l_env)
        ],
        "input": "annealed endpoints",
        "refine": refine,
        "n_endpoints": int(sum(c[1].size for c in curves)),
        "c_range": [float(c_env.min()), float(c_env.max())],
        "grid_fraction": float(c_env.size / n_grid),
    }


def _vertex(x3, y3) -> tuple[float, float]:
    """(x, y) of the vertex of the parabola through three points whose middle one is lowest;
    the middle point itself when the three are collinear (no curvature)."""
    p2, p1, p0 = np.polyfit(x3, y3, 2)
    if not p2 > 0:
        return float(x3[1]), float(y3[1])
    x = -p1 / (2 * p2)
    return float(x), float(p0 + p1 * x + p2 * x * x)
