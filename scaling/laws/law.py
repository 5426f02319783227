"""The law, its compute-optimal frontier, and what makes a fitted law degenerate.

The law (Hoffmann et al. 2022, eq. 2)::

    L(N, D) = E + A / N**alpha + B / D**beta

The compute-optimal frontier under C = 6 N D (their eq. 4)::

    G = (alpha A / (beta B)) ** (1 / (alpha + beta))
    a = beta / (alpha + beta),  b = alpha / (alpha + beta)
    N_opt(C) = G (C/6)**a,      D_opt(C) = (C/6)**b / G
"""

from __future__ import annotations

import math

import numpy as np

from scaling.errors import UsageError

__all__ = [
    "PARAM_NAMES",
    "DERIVED_NAMES",
    "N_PARAMS",
    "DEFAULT_DELTA",
    "DEGENERATE_REL",
    "law_loss",
    "frontier",
    "compute_optimal",
    "degenerate_reasons",
    "exponent_reasons",
    "power_law_fit",
    "as_runs",
]

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
"""The law's parameters, in the order used by samples arrays."""
DERIVED_NAMES = ("a", "b", "G")
N_PARAMS = 5
DEFAULT_DELTA = 1e-3
"""Hoffmann et al.'s Huber delta for approach 3."""
DEGENERATE_REL = 1e-4
"""A fitted E, or a fitted A/N^alpha or B/D^beta at every run, below this fraction of the
smallest observed loss counts as zero."""


def law_loss(N, D, E, A, B, alpha, beta):
    """L(N, D) = E + A / N**alpha + B / D**beta (broadcasting)."""
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return E + A * N ** (-alpha) + B * D ** (-beta)


def frontier(E, A, B, alpha, beta):
    """(G, a, b) of the compute-optimal frontier under C = 6 N D (Hoffmann et al. eq. 4);
    NaN where it does not exist (alpha, beta, A or B not > 0: a degenerate law)."""
    A, B, alpha, beta = (np.asarray(v, dtype=np.float64) for v in (A, B, alpha, beta))
    ok = (alpha > 0) & (beta > 0) & (A > 0) & (B > 0)
    with np.errstate(all="ignore"):
        G = np.where(ok, (alpha * A / (beta * B)) ** (1.0 / (alpha + beta)), np.nan)
        a = np.where(ok, beta / (alpha + beta), np.nan)
        b = np.where(ok, alpha / (alpha + beta), np.nan)
    return G[()], a[()], b[()]


def compute_optimal(C, E, A, B, alpha, beta):
    """Compute-optimal (N_opt, D_opt, L_opt) for budget(s) C under C = 6 N D (broadcasting)."""
    G, a, b = frontier(E, A, B, alpha, beta)
    C6 = np.asarray(C, dtype=np.float64) / 6.0
    n_opt = G * C6**a
    d_opt = C6**b / G
    return n_opt, d_opt, law_loss(n_opt, d_opt, E, A, B, alpha, beta)


def degenerate_reasons(params, N, D, L) -> tuple[str, ...]:
    """Why the law with ``params`` (E, A, B, alpha, beta), fitted to runs (N, D, L), is not a
    valid scaling law: a non-finite parameter, an exponent that is not positive (the loss does
    not fall with N or D, and the compute-optimal frontier does not exist), E at zero (no
    irreducible loss), or an N or D term that is negligible at every run (the data show no
    dependence on N or D). Empty when it is valid."""
    E, A, B, alpha, beta = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (E, A, B, alpha, beta)):
        return ("a fitted parameter is not finite",)
    reasons = []
    for name, v, x in (("alpha", alpha, "N"), ("beta", beta, "D")):
        if v <= 0:
            reasons.append(f"{name} = {v:.4g} <= 0: the fitted loss does not fall with {x}")
    floor = DEGENERATE_REL * float(np.min(L))
    if E < floor:
        reasons.append(f"E = {E:.3g} is at zero (below {DEGENERATE_REL:g} of the smallest loss): no irreducible loss")
    with np.errstate(over="ignore", under="ignore"):
        for term, coef, x, e, name in (("A/N^alpha", A, N, alpha, "N"), ("B/D^beta", B, D, beta, "D")):
            if e > 0 and float(np.max(coef * np.asarray(x, dtype=np.float64) ** -e)) < floor:
                reasons.append(
                    f"{term} is below {DEGENERATE_REL:g} of the smallest loss at every run: the "
                    f"data show no dependence on {name}"
                )
    return tuple(reasons)


def exponent_reasons(a: float, what: str) -> list[str]:
    """Why a fitted N_opt ~ C^a (so D_opt ~ C^(1 - a)) is degenerate: a not in (0, 1)."""
    if not math.isfinite(a):
        return [f"{what}: a is not finite"]
    if a <= 0:
        return [f"{what}: a = {a:.4g} <= 0: N_opt does not grow with compute"]
    if a >= 1:
        return [f"{what}: a = {a:.4g} >= 1: D_opt does not grow with compute"]
    return []


def power_law_fit(x, y) -> tuple[float, float]:
    """(k, p) of y = k x^p by least squares on log y = log k + p log x."""
    lx = np.log(np.asarray(x, dtype=np.float64))
    ly = np.log(np.asarray(y, dtype=np.float64))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise UsageError(f"a power law needs at least 2 distinct x values, got {lx.size}")
    p, lk = np.polyfit(lx, ly, 1)
    return float(math.exp(lk)), float(p)


def as_runs(N, D, L, *, what="runs"):
    """Validated float64 arrays (N, D, L), at least as many runs as the law has parameters;
    UsageError on bad input."""
    arrs = [np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L)]
    n = arrs[0].size
    if any(a.size != n for a in arrs):
        raise UsageError(f"N, D and loss have different lengths: {[a.size for a in arrs]}")
    for name, a in zip(("N", "D", "loss"), arrs):
        bad = ~np.isfinite(a)
        if bad.any():
            raise UsageError(f"{bad.sum()} non-finite {name} value(s) among the {what}")
        nonpos = a <= 0
        if nonpos.any():
            raise UsageError(
                f"{nonpos.sum()} non-positive {name} value(s) among the {what} "
                f"(first: {a[nonpos][0]:g}); the law needs N, D, loss > 0"
            )
    if n < N_PARAMS:
        raise UsageError(f"{n} {what} is fewer than the {N_PARAMS} parameters of L = E + A/N^alpha + B/D^beta")
    return arrs[0], arrs[1], arrs[2]
