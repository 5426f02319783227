"""Approach 1: the lower envelope of loss against compute, from training curves or from
annealed endpoints.

Hoffmann et al.'s approach 1 takes, at each FLOP count, the lowest loss any run reaches
and the N that reaches it; then ``N_opt = k_n C**a`` (and ``D_opt = C/(6 N_opt) = k_d
C**b``).  Read from raw training curves of a small sweep (:func:`fit_approach1`: each curve
interpolated in log-FLOPs on a log-spaced grid) it has three biases of method, each present
even on ideal curves from a known law:

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from scaling.errors import UsageError
from scaling.laws.law import exponent_reasons, power_law_fit
from scaling.laws.record import JsonRecord

__all__ = [
    "EnvelopePoint",
    "Envelope",
    "EndpointEnvelope",
    "fit_approach1",
    "annealed_curves",
    "fit_approach1_endpoints",
    "REFINES",
]

REFINES = ("parabola", "none")


@dataclass(frozen=True)
class EnvelopePoint(JsonRecord):
    """The lowest loss at compute C, and the N that reaches it."""

    C: float
    N_opt: float
    L_min: float

    @property
    def D_opt(self) -> float:
        return float(self.C / (6 * self.N_opt))

    def to_dict(self) -> dict:
        return {"C": self.C, "N_opt": self.N_opt, "D_opt": self.D_opt, "L_min": self.L_min}


@dataclass(frozen=True)
class Envelope(JsonRecord):
    """Approach 1 on training curves: the envelope and N_opt = k_n C^a, D_opt = k_d C^b."""

    a: float
    b: float
    k_n: float
    k_d: float
    n_runs: int  # curves that entered the envelope
    points: tuple[EnvelopePoint, ...]
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
            "n_runs": self.n_runs,
            "envelope": [p.to_dict() for p in self.points],
            "degenerate": self.degenerate,
            "degenerate_reasons": list(self.degenerate_reasons),
        }


@dataclass(frozen=True)
class EndpointEnvelope(JsonRecord):
    """Approach 1 on annealed endpoints, over the compute where the sizes bracket the optimum."""

    a: float
    b: float
    k_n: float
    k_d: float
    n_runs: int  # sizes with an annealed curve
    points: tuple[EnvelopePoint, ...]  # the bracketed grid points
    refine: str
    n_endpoints: int
    grid_fraction: float  # the share of the grid where the optimum is bracketed

    @property
    def c_range(self) -> tuple[float, float]:
        """The bracketed range of C."""
        cs = [p.C for p in self.points]
        return float(min(cs)), float(max(cs))

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "k_n": self.k_n,
            "k_d": self.k_d,
            "n_runs": self.n_runs,
            "envelope": [p.to_dict() for p in self.points],
            "input": "annealed endpoints",
            "refine": self.refine,
            "n_endpoints": self.n_endpoints,
            "c_range": list(self.c_range),
            "grid_fraction": self.grid_fraction,
        }


def fit_approach1(
    curves: Sequence[tuple[float, Iterable[float], Iterable[float]]],
    *,
    n_grid: int = 100,
    min_runs: int = 2,
) -> Envelope:
    """Approach 1: the lower envelope of training curves.

    ``curves``: (N, flops, loss) per run.  Each curve is interpolated in log-FLOPs on a
    log-spaced grid of ``n_grid`` FLOP values; at each grid point covered by at least
    ``min_runs`` curves the run with the lowest loss gives (N_opt, L_min); then
    N_opt = k_n C^a (and D_opt = C / (6 N_opt) = k_d C^b, so b = 1 - a).

    Raw training curves bias this (losses before the learning rate decays, an envelope
    clamped at the smallest and largest sizes, a step function of few sizes);
    :func:`fit_approach1_endpoints` is approach 1 on annealed endpoints where the sizes
    bracket the optimum.
    """
    runs = []
    for i, (n_i, fl, lo) in enumerate(curves):
        fl = np.asarray(fl, dtype=np.float64).ravel()
        lo = np.asarray(lo, dtype=np.float64).ravel()
        if fl.size != lo.size:
            raise UsageError(f"curve {i}: {fl.size} FLOP values but {lo.size} losses")
        if not (np.isfinite(n_i) and n_i > 0):
            raise UsageError(f"curve {i}: N must be positive, got {n_i}")
        ok = np.isfinite(fl) & np.isfinite(lo) & (fl > 0)
        fl, lo = fl[ok], lo[ok]
        if np.any(lo <= 0):
            raise UsageError(f"curve {i}: non-positive loss")
        order = np.argsort(fl, kind="stable")
        fl, lo = fl[order], lo[order]
        if fl.size >= 2 and fl[-1] > fl[0]:
            runs.append((float(n_i), np.log(fl), lo))
    if len(runs) < 2:
        raise UsageError(f"approach 1 needs training curves of at least 2 runs, got {len(runs)}")
    lo_c = min(r[1][0] for r in runs)
    hi_c = max(r[1][-1] for r in runs)
    grid = np.linspace(lo_c, hi_c, n_grid)
    loss_rg = np.full((len(runs), n_grid), np.nan)
    for j, (_, lf, lo) in enumerate(runs):
        inside = (grid >= lf[0]) & (grid <= lf[-1])
        loss_rg[j, inside] = np.interp(grid[inside], lf, lo)
    covered = np.sum(np.isfinite(loss_rg), axis=0) >= min(min_runs, len(runs))
    if covered.sum() < 2:
        raise UsageError("approach 1: fewer than 2 FLOP values are reached by enough runs")
    lg = loss_rg[:, covered]
    best = np.nanargmin(lg, axis=0)
    Ns = np.array([r[0] for r in runs])
    c_env = np.exp(grid[covered])
    n_env = Ns[best]
    l_env = lg[best, np.arange(lg.shape[1])]
    k_n, a = power_law_fit(c_env, n_env)
    k_d, b = power_law_fit(c_env, c_env / (6 * n_env))
    points = tuple(
        EnvelopePoint(C=float(c), N_opt=float(nn), L_min=float(ll)) for c, nn, ll in zip(c_env, n_env, l_env)
    )
    return Envelope(
        a=a,
        b=b,
        k_n=k_n,
        k_d=k_d,
        n_runs=len(runs),
        points=points,
        degenerate_reasons=tuple(exponent_reasons(a, "approach 1")),
    )


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


MIN_SIZES = 3  # sizes with an annealed curve: a best size needs a neighbour on each side
MIN_ENDPOINTS = 2  # endpoints of distinct C that make a size's annealed curve


def endpoints_problem(N, C, *, min_sizes: int = MIN_SIZES, min_endpoints: int = MIN_ENDPOINTS) -> str | None:
    """Why approach 1 on annealed endpoints cannot run on runs of these (N, C) (too few sizes
    with enough endpoints of distinct C), found without fitting; None when it can."""
    N, C = (np.asarray(v, dtype=np.float64).ravel() for v in (N, C))
    usable = sum(np.unique(C[N == n]).size >= min_endpoints for n in np.unique(N))
    if usable < min_sizes:
        return (
            f"approach 1 on annealed endpoints needs at least {min_sizes} model sizes with {min_endpoints} "
            f"or more endpoints (different C) each, found {usable}"
        )
    return None


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


def fit_approach1_endpoints(N, C, L, *, n_grid: int = 200, refine: str = "parabola") -> EndpointEnvelope:
    """Approach 1 on annealed endpoints (N, C, L) (see the module docstring).

    UsageError when fewer than MIN_SIZES sizes have MIN_ENDPOINTS or more endpoints
    (:func:`endpoints_problem`), or when the optimum is bracketed at fewer than 2 grid points.
    """
    if refine not in REFINES:
        raise UsageError(f"approach 1: refine must be one of {REFINES}, got {refine!r}")
    if n_grid < 2:
        raise UsageError(f"approach 1: n_grid must be >= 2, got {n_grid}")
    curves = [c for c in annealed_curves(N, C, L) if c[1].size >= MIN_ENDPOINTS]
    if (why := endpoints_problem(N, C)) is not None:
        raise UsageError(why)
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
    k_d, b = power_law_fit(c_env, c_env / (6 * n_env))
    points = tuple(EnvelopePoint(C=float(c), N_opt=float(n), L_min=float(l)) for c, n, l in zip(c_env, n_env, l_env))
    return EndpointEnvelope(
        a=a,
        b=b,
        k_n=k_n,
        k_d=k_d,
        n_runs=int(sizes.size),
        points=points,
        refine=refine,
        n_endpoints=int(sum(c[1].size for c in curves)),
        grid_fraction=float(c_env.size / n_grid),
    )


def _vertex(x3, y3) -> tuple[float, float]:
    """(x, y) of the vertex of the parabola through three points whose middle one is lowest;
    the middle point itself when the three are collinear (no curvature)."""
    p2, p1, p0 = np.polyfit(x3, y3, 2)
    if not p2 > 0:
        return float(x3[1]), float(y3[1])
    x = -p1 / (2 * p2)
    return float(x), float(p0 + p1 * x + p2 * x * x)
