"""Chinchilla scaling-law fits: approaches 1, 2 and 3, the compute-optimal frontier,
bootstrap intervals and hold-out checks.  Pure numpy/scipy; no plotting, no file I/O.

The law (Hoffmann et al. 2022, eq. 2)::

    L(N, D) = E + A / N**alpha + B / D**beta

Approach 3 (:func:`fit_approach3`) fits it as Hoffmann et al. did: minimise the *sum*
over runs of ``Huber_delta(LSE(a - alpha log N, b - beta log D, e) - log L)`` with
``delta = 1e-3`` by L-BFGS from every start of their grid (:func:`hoffmann_grid`,
4,500 starts), keeping the best; ``A, B, E = exp(a, b, e)``.  The 4,500 runs of L-BFGS
are done together, vectorised over the starts (:func:`lbfgs_batch`: one numpy
evaluation of the objective and its analytic gradient for every still-running start
per step), and L-BFGS then goes on from the best point with tighter tolerances.  On the
Chinchilla data this finds the same optimum as a plain loop of
``scipy.optimize.minimize(method="L-BFGS-B")`` over the grid (Epoch AI's re-run:
A = 477.8, B = 2143.9, E = 1.8172, alpha = 0.3473, beta = 0.3672), about 8x faster
than that loop given the analytic gradient and about 90x faster than with scipy's
finite differences (``benchmarks/fit_speed.py``; ~2 s on 2 busy cores).

The compute-optimal frontier (:func:`frontier`, from approach 3 with C = 6 N D)::

    G = (alpha A / (beta B)) ** (1 / (alpha + beta))
    a = beta / (alpha + beta),  b = alpha / (alpha + beta)
    N_opt(C) = G (C/6)**a,      D_opt(C) = (C/6)**b / G

Approach 2 (:func:`fit_approach2`): IsoFLOP profiles.  Runs are grouped by budget (given
labels, or budgets equal within a relative tolerance, :func:`isoflop_groups`); per
budget a parabola of loss against log N is fitted and its minimum taken
(``N_opt``, ``L_min``; ``D_opt = C / (6 N_opt)``); then ``N_opt = k_n C**a`` and
``D_opt = k_d C**b`` by least squares in log-log.

Approach 1 (:func:`fit_approach1`): from training curves ``[(N, flops, loss), ...]``,
the lowest loss reached at each FLOP count (a log-spaced grid, each curve
interpolated in log-FLOPs) across runs, and the N that reaches it; then
``N_opt = k_n C**a`` (and ``D_opt = C/(6 N_opt) = k_d C**b``).

Uncertainty (:func:`bootstrap_approach3`): resample runs with replacement, refit,
percentile intervals for E, A, B, alpha, beta, a, b, G.  A resample is refitted by
L-BFGS from 32 of the grid starts whose full-data run reached the optimum
(``starts="best"``, the default: fast; see :func:`bootstrap_starts`) or from the whole
grid (``starts="grid"``).

JSON structure written by ``python -m analysis.fit`` (built from ``to_dict`` here)::

    {
      "E", "A", "B", "alpha", "beta",        # approach 3 (when run)
      "a", "b", "G",                          # its compute-optimal frontier
      "loss", "n_points", "n_starts", "n_starts_at_best", "delta",
      "degenerate": false, "degenerate_reasons": [],   # see degenerate_reasons()
      "ci_level": 0.95,                       # with --bootstrap K
      "ci": {"E": [lo, hi], ..., "a": [lo, hi], "b": [lo, hi], "G": [lo, hi]},
      "bootstrap": {"n_resamples", "seed", "starts", "n_failed"},
      "predict": [{"C", "N_opt", "D_opt", "loss", "ci": {...}}],   # --predict-c
      "holdout": {"k", "fit": {...}, "runs": [{"N", "D", "C", "observed",
                  "predicted", "rel_error"}], "mean_abs_rel_error"},
      "approach2": {"a", "b", "k_n", "k_d", "budgets": "given" | "grouped by C",
                    "budget_tol", "minima": [{"C", "N_opt", "D_opt", "L_min", "n_runs",
                    "parabola": [p2, p1, p0]}], "skipped": [{"C", "reason"}],
                    "degenerate", "degenerate_reasons"},
      "approach1": {"a", "b", "k_n", "k_d", "n_runs", "envelope": [{"C", "N_opt",
                    "D_opt", "L_min"}], "degenerate", "degenerate_reasons"},
      "input": {"results", "n_col", "d_col", "c_col", "loss_col", "drop_top_loss", "n_runs"},
    }

A degenerate fit (approach 3: an exponent <= 0, E at zero, a term negligible at every run;
approaches 1 and 2: a outside (0, 1)) is written with ``"degenerate": true`` and its
reasons; values that do not exist for it (the frontier a, b, G of a law whose exponent is
not positive) are null: the JSON never holds NaN or infinity.

An approach that ``--approach all`` cannot run on the input appears as
``{"not_run": reason}``.  With ``--group-col COL``: ``{"group_col": COL, "groups":
{value: <the fit keys above>}, "approach1": ..., "input": ...}``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from scaling.errors import UsageError

__all__ = [
    "PARAM_NAMES",
    "LawFit",
    "huber",
    "law_loss",
    "objective",
    "objective_and_grad_batch",
    "hoffmann_grid",
    "lbfgs_batch",
    "fit_approach3",
    "frontier",
    "compute_optimal",
    "Bootstrap",
    "bootstrap_approach3",
    "percentile_interval",
    "holdout_top_c",
    "isoflop_groups",
    "fit_approach2",
    "fit_approach1",
    "power_law_fit",
]

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
"""The law's parameters, in the order used by samples arrays."""
DERIVED_NAMES = ("a", "b", "G")
N_PARAMS = 5
DEFAULT_DELTA = 1e-3


# --------------------------------------------------------------------------- the law


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


def huber(r, delta):
    """scipy-style Huber: 0.5 r^2 if |r| <= delta else delta (|r| - 0.5 delta)."""
    r = np.asarray(r, dtype=np.float64)
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def objective(theta, N, D, L, delta=DEFAULT_DELTA, weights=None):
    """Hoffmann's approach-3 objective at theta = (a, b, e, alpha, beta) (log-space).

    sum_i w_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i).
    A straightforward scalar reference for :func:`objective_and_grad_batch`.
    """
    from scipy.special import logsumexp

    a, b, e, alpha, beta = (float(v) for v in theta)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    u = np.stack([a - alpha * lN, b - beta * lD, np.full_like(lN, e)])
    r = logsumexp(u, axis=0) - lL
    w = np.ones_like(lL) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * huber(r, delta)))


def objective_and_grad_batch(theta_b5, lN, lD, lL, w, delta, *, chunk=512):
    """Objective and analytic gradient for a batch of parameter vectors.

    theta_b5: (B, 5) rows (a, b, e, alpha, beta); lN, lD, lL: (n,) logs of N, D, L;
    w: (B, n) per-row run weights (bootstrap counts) or (1, n) shared ones.  Returns
    f_b (B,) and g_b5 (B, 5).

    With x1 = exp(a - alpha log N - e), x2 = exp(b - beta log D - e) and s = 1 + x1 + x2,
    LSE = e + log s and the residual r = LSE - log L; Huber(r) = c (r - c/2) with
    c = clip(r, -delta, delta) and its derivative is c, so d f / d(a, b, e) are
    sums of w c x1 / s, w c x2 / s, w c / s.  Rows are processed in cache-sized chunks;
    a chunk whose exponent would overflow falls back to the max-shifted form.
    """
    theta_b5 = np.asarray(theta_b5, dtype=np.float64)
    nb = theta_b5.shape[0]
    n = lN.shape[0]
    f = np.empty(nb)
    g = np.empty((nb, N_PARAMS))
    m1 = np.stack([np.ones(n), -lN], axis=1)
    m2 = np.stack([np.ones(n), -lD], axis=1)
    per_row = w.shape[0] > 1
    weighted = per_row or not np.all(w == 1.0)
    for s0 in range(0, nb, chunk):
        th = theta_b5[s0 : s0 + chunk]
        sl = slice(s0, s0 + th.shape[0])
        e = th[:, 2:3]
        x1 = np.multiply(th[:, 3:4], -lN)
        x1 += th[:, 0:1] - e
        x2 = np.multiply(th[:, 4:5], -lD)
        x2 += th[:, 1:2] - e
        wc = w[sl] if per_row else w
        if not (x1.max(initial=-np.inf) < 700.0 and x2.max(initial=-np.inf) < 700.0):
            f[sl], g[sl] = _objective_and_grad_shifted(th, lN, lD, lL, wc, delta)
            continue
        np.exp(x1, out=x1)
        np.exp(x2, out=x2)
        s = x1 + x2
        s += 1.0
        r = np.log(s)
        r += e - lL
        c = np.clip(r, -delta, delta)
        r -= 0.5 * c
        if weighted:
            c *= wc
        f[sl] = np.einsum("bn,bn->b", c, r)
        c /= s
        g[sl, 2] = c.sum(axis=1)
        x1 *= c
        x2 *= c
        t1 = x1 @ m1
        t2 = x2 @ m2
        g[sl, 0] = t1[:, 0]
        g[sl, 3] = t1[:, 1]
        g[sl, 1] = t2[:, 0]
        g[sl, 4] = t2[:, 1]
    return f, g


def _objective_and_grad_shifted(theta_b5, lN, lD, lL, w, delta):
    """The same as :func:`objective_and_grad_batch`, shifted by max(u1, u2, e): never overflows."""
    u1 = theta_b5[:, 0:1] - theta_b5[:, 3:4] * lN
    u2 = theta_b5[:, 1:2] - theta_b5[:, 4:5] * lD
    e = theta_b5[:, 2:3]
    m = np.maximum(np.maximum(u1, u2), e)
    x1 = np.exp(u1 - m)
    x2 = np.exp(u2 - m)
    x3 = np.exp(e - m)
    s = x1 + x2 + x3
    r = m + np.log(s) - lL
    c = np.clip(r, -delta, delta)
    cw = c * w
    f = np.sum(cw * (r - 0.5 * c), axis=1)
    dh = cw / s
    g = np.stack(
        [(dh * x1).sum(1), (dh * x2).sum(1), (dh * x3).sum(1), -(dh * x1) @ lN, -(dh * x2) @ lD],
        axis=1,
    )
    return f, g


def hoffmann_grid():
    """Hoffmann et al.'s 4,500 starts as (a, b, e, alpha, beta) rows.

    alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}.
    """
    alphas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    rows = [
        (a, b, e, al, be)
        for al, be, e, a, b in itertools.product(alphas, alphas, es, abs_, abs_)
    ]
    return np.array(rows, dtype=np.float64)


# ------------------------------------------------------------------- batched L-BFGS


@dataclass(frozen=True)
class BatchResult:
    """Outcome of :func:`lbfgs_batch`: one row per start."""

    x: np.ndarray  # (B, P) final points
    f: np.ndarray  # (B,) final objective values
    nit: np.ndarray  # (B,) iterations taken
    status: np.ndarray  # (B,) 0 ftol, 1 gtol, 2 maxiter, 3 line search failed, 4 non-finite
    n_evals: int  # calls of fun_grad (each on all the problems still running)


def lbfgs_batch(
    fun_grad: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    *,
    m: int = 10,
    maxiter: int = 1000,
    ftol: float = 2.220446049250313e-09,
    gtol: float = 1e-5,
    max_backtracks: int = 30,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> BatchResult:
    """Minimise many independent problems at once with L-BFGS.

    ``fun_grad(x_bp, rows)`` returns (f_b, g_bp) for the points ``x_bp`` of the problems
    ``rows`` (indices into x0's rows; lets a problem carry its own data, e.g. bootstrap
    weights).  Stopping rules follow scipy's L-BFGS-B defaults: relative reduction
    ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol`` or ``max|g| <= gtol``.  The line
    search looks for a weak-Wolfe step (sufficient decrease ``c1``, curvature ``c2``)
    from the unit step (the first iteration from ``1/|g|``, as L-BFGS-B), doubling while
    the slope is still steep and bisecting once a too-long step is known; if none is
    found it takes the last step with sufficient decrease.  A pair (s, y) enters the
    memory only when ``s.y > eps |y|^2``.  Finished problems leave the batch, so the cost
    is the sum of the problems' iterations, not the maximum.
    """
    x0 = np.array(x0, dtype=np.float64)
    nb, p = x0.shape
    x_out = x0.copy()
    f_out = np.full(nb, np.inf)
    nit_out = np.zeros(nb, dtype=np.int64)
    status_out = np.full(nb, 2, dtype=np.int64)
    n_evals = 0

    rows = np.arange(nb)
    x = x0.copy()
    f, g = fun_grad(x, rows)
    n_evals += 1
    S = np.zeros((nb, m, p))
    Y = np.zeros((nb, m, p))
    rho = np.zeros((nb, m))
    valid = np.zeros((nb, m), dtype=bool)
    nit = np.zeros(nb, dtype=np.int64)

    def finish(mask, code):
        nonlocal rows, x, f, g, S, Y, rho, valid, nit
        if not mask.any():
            return
        idx = rows[mask]
        x_out[idx] = x[mask]
        f_out[idx] = f[mask]
        nit_out[idx] = nit[mask]
        status_out[idx] = code
        keep = ~mask
        rows, x, f, g = rows[keep], x[keep], f[keep], g[keep]
        S, Y, rho, valid, nit = S[keep], Y[keep], rho[keep], valid[keep], nit[keep]

    bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
    finish(bad, 4)
    finish(np.max(np.abs(g), axis=1) <= gtol, 1)

    eps = np.finfo(np.float64).eps
    for _ in range(maxiter):
        if rows.size == 0:
            break
        # two-loop recursion, newest pair last
        q = g.copy()
        alph = np.zeros((rows.size, m))
        for i in range(m - 1, -1, -1):
            ai = np.where(valid[:, i], rho[:, i] * np.einsum("bp,bp->b", S[:, i], q), 0.0)
            q -= ai[:, None] * Y[:, i]
            alph[:, i] = ai
        has = valid[:, -1]
        yy = np.einsum("bp,bp->b", Y[:, -1], Y[:, -1])
        gamma = np.where(has, 1.0 / np.where(has, rho[:, -1] * yy, 1.0), 1.0)
        r = gamma[:, None] * q
        for i in range(m):
            bi = np.where(valid[:, i], rho[:, i] * np.einsum("bp,bp->b", Y[:, i], r), 0.0)
            r += S[:, i] * (alph[:, i] - bi)[:, None]
        d = -r
        gd = np.einsum("bp,bp->b", g, d)
        reset = ~(gd < 0) | ~np.isfinite(gd)
        if reset.any():  # not a descent direction: steepest descent, forget the memory
            d[reset] = -g[reset]
            valid[reset] = False
            has = has & ~reset
            gd = np.einsum("bp,bp->b", g, d)
        # unit step once there is curvature information, 1/|g| before (as L-BFGS-B)
        t = np.where(has, 1.0, 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-300))

        # batched weak-Wolfe line search (Lewis & Overton's bracketing: expand by 2
        # while the slope is still steep, bisect/interpolate once an upper end is known)
        x_new = np.empty_like(x)
        f_new = np.empty_like(f)
        g_new = np.empty_like(g)
        lo = np.zeros(rows.size)
        hi = np.full(rows.size, np.inf)
        ok = np.zeros(rows.size, dtype=bool)
        todo = np.arange(rows.size)
        for _ls in range(max_backtracks):
            xt = x[todo] + t[todo, None] * d[todo]
            ft, gt = fun_grad(xt, rows[todo])
            n_evals += 1
            fine = np.isfinite(ft) & np.all(np.isfinite(gt), axis=1)
            armijo = fine & (ft <= f[todo] + c1 * t[todo] * gd[todo])
            curv = np.einsum("bp,bp->b", gt, d[todo]) >= c2 * gd[todo]
            acc = armijo & curv
            # remember the last Armijo point as a fallback
            ia = todo[armijo]
            x_new[ia], f_new[ia], g_new[ia] = xt[armijo], ft[armijo], gt[armijo]
            ok[ia] = True
            hi[todo[~armijo]] = t[todo[~armijo]]
            grow = armijo & ~curv
            lo[todo[grow]] = t[todo[grow]]
            rest = ~acc
            todo = todo[rest]
            if todo.size == 0:
                break
            tl, th = lo[todo], hi[todo]
            t[todo] = np.where(np.isfinite(th), 0.5 * (tl + th), 2.0 * tl)
        failed = ~ok
        nit += ok
        # scipy-like stopping rules
        df_ = np.where(ok, f - f_new, 0.0)
        scale = np.maximum(np.maximum(np.abs(f), np.abs(np.where(ok, f_new, f))), 1.0)
        s_vec = np.where(ok[:, None], x_new - x, 0.0)
        y_vec = np.where(ok[:, None], g_new - g, 0.0)
        x = np.where(ok[:, None], x_new, x)
        f = np.where(ok, f_new, f)
        g = np.where(ok[:, None], g_new, g)
        sy = np.einsum("bp,bp->b", s_vec, y_vec)
        yy = np.einsum("bp,bp->b", y_vec, y_vec)
        upd = ok & (sy > eps * yy) & (sy > 0)
        if upd.any():
            S[upd] = np.roll(S[upd], -1, axis=1)
            Y[upd] = np.roll(Y[upd], -1, axis=1)
            rho[upd] = np.roll(rho[upd], -1, axis=1)
            valid[upd] = np.roll(valid[upd], -1, axis=1)
            S[upd, -1] = s_vec[upd]
            Y[upd, -1] = y_vec[upd]
            rho[upd, -1] = 1.0 / sy[upd]
            valid[upd, -1] = True
        conv_g = ok & (np.max(np.abs(g), axis=1) <= gtol)
        conv_f = ok & (df_ <= ftol * scale) & ~conv_g
        code = np.full(rows.size, -1)
        code[failed] = 3
        code[conv_f] = 0
        code[conv_g] = 1
        for c in (0, 1, 3):
            finish(code == c, c)
            code = code[code != c]
    if rows.size:
        finish(np.ones(rows.size, dtype=bool), 2)
    return BatchResult(x=x_out, f=f_out, nit=nit_out, status=status_out, n_evals=n_evals)


# ------------------------------------------------------------------------ degenerate fits

DEGENERATE_REL = 1e-4
"""A fitted E, or a fitted A/N^alpha or B/D^beta at every run, below this fraction of the
smallest observed loss counts as zero."""


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


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
                reasons.append(f"{term} is below {DEGENERATE_REL:g} of the smallest loss at every run: the "
                               f"data show no dependence on {name}")
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


# ------------------------------------------------------------------------ approach 3


def _as_runs(N, D, L, *, what="runs"):
    """Validated float64 arrays (N, D, L); UsageError on bad input."""
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
        raise UsageError(
            f"{n} {what} is fewer than the {N_PARAMS} parameters of L = E + A/N^alpha + B/D^beta"
        )
    return arrs[0], arrs[1], arrs[2]


@dataclass(frozen=True)
class LawFit:
    """An approach-3 fit of L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    loss: float  # the objective at the optimum (sum of Huber losses)
    n_points: int
    n_starts: int
    n_starts_at_best: int  # starts whose run ended within 1e-6 (relative) of the best
    delta: float
    ranked_starts: np.ndarray = dataclasses.field(repr=False, compare=False, default=None)
    """The starts (rows (a, b, e, alpha, beta)) ordered by the objective their run reached, best first."""
    degenerate_reasons: tuple[str, ...] = ()
    """Why the fit is not a valid scaling law (:func:`degenerate_reasons`); empty when it is."""

    @property
    def degenerate(self) -> bool:
        return bool(self.degenerate_reasons)

    @property
    def params(self) -> tuple[float, float, float, float, float]:
        return (self.E, self.A, self.B, self.alpha, self.beta)

    @property
    def theta(self) -> np.ndarray:
        """Log-space parameters (a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta)."""
        with np.errstate(divide="ignore"):  # a coefficient that underflowed to 0 is -inf here
            return np.array([*np.log([self.A, self.B, self.E]), self.alpha, self.beta])

    @property
    def G(self) -> float:
        return float(frontier(*self.params)[0])

    @property
    def a(self) -> float:
        return float(frontier(*self.params)[1])

    @property
    def b(self) -> float:
        return float(frontier(*self.params)[2])

    def predict(self, N, D):
        """Predicted loss L(N, D)."""
        return law_loss(N, D, *self.params)

    def optimal(self, C):
        """Compute-optimal (N_opt, D_opt, L_opt) for budget(s) C under C = 6 N D."""
        return compute_optimal(C, *self.params)

    def to_dict(self) -> dict:
        """The JSON fields; a frontier value that does not exist (a degenerate law) is None."""
        return {
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "a": _finite_or_none(self.a),
            "b": _finite_or_none(self.b),
            "G": _finite_or_none(self.G),
            "loss": self.loss,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "n_starts_at_best": self.n_starts_at_best,
            "delta": self.delta,
            "degenerate": self.degenerate,
            "degenerate_reasons": list(self.degenerate_reasons),
        }

    @classmethod
    def from_theta(cls, theta, **kw) -> "LawFit":
        a, b, e, alpha, beta = (float(v) for v in theta)
        with np.errstate(over="ignore"):  # inf: a degenerate fit, flagged by degenerate_reasons
            E, A, B = (float(v) for v in np.exp([e, a, b]))
        return cls(E=E, A=A, B=B, alpha=alpha, beta=beta, **kw)


def fit_approach3(
    N,
    D,
    L,
    *,
    delta: float = DEFAULT_DELTA,
    starts: np.ndarray | None = None,
    polish: bool = True,
) -> LawFit:
    """Hoffmann et al.'s approach 3: best L-BFGS fit over the start grid.

    Minimises sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)
    from every row of ``starts`` ((k, 5) as (a, b, e, alpha, beta); default the 4,500
    of :func:`hoffmann_grid`), all at once (:func:`lbfgs_batch`), keeps the best and
    (``polish``) runs L-BFGS on from it with tighter tolerances.
    """
    N, D, L = _as_runs(N, D, L)
    if not delta > 0:
        raise UsageError(f"Huber delta must be > 0, got {delta}")
    x0 = hoffmann_grid() if starts is None else np.asarray(starts, dtype=np.float64).reshape(-1, N_PARAMS)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    w = np.ones((1, N.size))

    def fun_grad(x, rows):
        return objective_and_grad_batch(x, lN, lD, lL, w, delta)

    res = lbfgs_batch(fun_grad, x0)
    f = np.where(np.isfinite(res.f), res.f, np.inf)
    i = int(np.argmin(f))
    x_best, f_best = res.x[i].copy(), float(f[i])
    if not np.isfinite(f_best):
        raise RuntimeError("approach 3: no start reached a finite objective")
    if polish:  # a tighter L-BFGS run from the best point (scipy's L-BFGS-B gives the same)
        pol = lbfgs_batch(fun_grad, x_best[None, :], ftol=1e-15, gtol=1e-10, maxiter=2000)
        if np.isfinite(pol.f[0]) and pol.f[0] < f_best:
            x_best, f_best = pol.x[0].copy(), float(pol.f[0])
    at_best = int(np.sum(f <= f_best * (1 + 1e-6) + 1e-15))
    with np.errstate(over="ignore", under="ignore"):
        params = (np.exp(x_best[2]), np.exp(x_best[0]), np.exp(x_best[1]), x_best[3], x_best[4])
    return LawFit.from_theta(
        x_best,
        degenerate_reasons=degenerate_reasons(params, N, D, L),
        loss=f_best,
        n_points=int(N.size),
        n_starts=int(x0.shape[0]),
        n_starts_at_best=max(at_best, 1),
        delta=float(delta),
        ranked_starts=x0[np.argsort(f, kind="stable")],
    )


# ------------------------------------------------------------------------- bootstrap

SAMPLE_NAMES = PARAM_NAMES + DERIVED_NAMES


def percentile_interval(samples, level: float = 0.95):
    """Percentile interval(s) [lo, hi] of samples along axis 0 at the given level."""
    if not 0 < level < 1:
        raise UsageError(f"confidence level must be in (0, 1), got {level}")
    q = [50.0 * (1 - level), 50.0 * (1 + level)]
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[0] == 0:  # every resample failed: no interval
        return np.full((2,) + samples.shape[1:], np.nan)
    return np.percentile(samples, q, axis=0)


@dataclass(frozen=True)
class Bootstrap:
    """Bootstrap refits: samples[:, j] is SAMPLE_NAMES[j] (E, A, B, alpha, beta, a, b, G)."""

    samples: np.ndarray
    level: float
    seed: int
    starts: str
    n_failed: int

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, SAMPLE_NAMES.index(name)]

    def interval(self, name: str) -> tuple[float, float]:
        lo, hi = percentile_interval(self.column(name), self.level)
        return float(lo), float(hi)

    def ci(self) -> dict[str, list[float]]:
        lohi = percentile_interval(self.samples, self.level)
        return {k: [float(lohi[0, j]), float(lohi[1, j])] for j, k in enumerate(SAMPLE_NAMES)}

    def optimal_interval(self, C: float) -> dict[str, list[float]]:
        """Percentile intervals of the compute-optimal N_opt, D_opt and loss at budget C."""
        vals = np.stack(compute_optimal(C, *self.samples[:, :N_PARAMS].T), axis=1)
        lohi = percentile_interval(vals, self.level)
        return {k: [float(lohi[0, j]), float(lohi[1, j])] for j, k in enumerate(("N_opt", "D_opt", "loss"))}

    def to_dict(self) -> dict:
        return {
            "n_resamples": int(self.samples.shape[0] + self.n_failed),
            "seed": self.seed,
            "starts": self.starts,
            "n_failed": self.n_failed,
        }


def _samples_from_theta(theta_k5):
    a, b, e, alpha, beta = theta_k5.T
    E, A, B = np.exp(e), np.exp(a), np.exp(b)
    G, aa, bb = frontier(E, A, B, alpha, beta)
    return np.stack([E, A, B, alpha, beta, aa, bb, G], axis=1)


def bootstrap_starts(fit: LawFit, n_starts: int = 32) -> np.ndarray:
    """The grid starts a bootstrap refit runs from: ``n_starts`` of the starts whose
    full-data run reached the optimum (within 1e-6 relative), spread evenly over them
    (topped up with the next best-ending starts when fewer reached it)."""
    ranked = fit.ranked_starts
    if ranked is None or len(ranked) == 0:
        return fit.theta[None, :]
    n_starts = max(1, min(int(n_starts), len(ranked)))
    pool = max(fit.n_starts_at_best, n_starts)
    pick = np.unique(np.linspace(0, pool - 1, n_starts).round().astype(np.int64))
    return np.asarray(ranked)[pick]


def bootstrap_approach3(
    N,
    D,
    L,
    fit: LawFit | None = None,
    n_resamples: int = 1000,
    *,
    seed: int = 0,
    level: float = 0.95,
    delta: float | None = None,
    starts: str = "best",
    n_starts: int = 32,
    chunk: int = 100,
    progress: bool = False,
) -> Bootstrap:
    """Refit approach 3 on ``n_resamples`` resamples of the runs (with replacement).

    Each refit is the approach-3 procedure (L-BFGS from grid starts, keep the best) run
    from ``starts="best"``: the ``n_starts`` grid starts whose run on the full data
    reached the optimum (:func:`bootstrap_starts`; default, fast), or ``"grid"``: all
    4,500 (about a second per resample).  Starting from the optimum itself is not
    used: with delta = 1e-3 the objective is nearly piecewise linear and L-BFGS
    stops at the nearest kink, so such intervals come out far too narrow (on the
    Chinchilla data alpha's 95% interval shrank about 15-fold).  On the Chinchilla data,
    16, 32 and 64 of those starts each found the full grid's optimum (objective within
    1e-6, alpha within 3e-5) in 30 of 30 resamples checked.  Resamples are fitted together in chunks, each one
    batch of (resample, start) problems with per-problem run weights (counts).
    """
    N, D, L = _as_runs(N, D, L)
    if n_resamples < 1:
        raise UsageError(f"--bootstrap needs at least 1 resample, got {n_resamples}")
    if starts not in ("best", "grid"):
        raise UsageError(f"bootstrap starts must be 'best' or 'grid', got {starts!r}")
    percentile_interval(np.zeros(2), level)  # validates level
    if fit is None:
        fit = fit_approach3(N, D, L, delta=DEFAULT_DELTA if delta is None else delta)
    delta = fit.delta if delta is None else delta
    x_starts = hoffmann_grid() if starts == "grid" else bootstrap_starts(fit, n_starts)
    k = x_starts.shape[0]
    n = N.size
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n), idx.ravel()), 1.0)

    per = max(1, (chunk * 32) // k)  # resamples per batch: about chunk * 32 problems
    thetas = np.full((n_resamples, N_PARAMS), np.nan)
    from tqdm import tqdm

    with tqdm(total=n_resamples, desc="bootstrap", unit="fit", disable=not progress, file=_stderr()) as bar:
        for r0 in range(0, n_resamples, per):
            cw = counts[r0 : r0 + per]
            nr = cw.shape[0]
            w_all = np.repeat(cw, k, axis=0)  # (nr * k, n)
            x0 = np.tile(x_starts, (nr, 1))

            def fun_grad(x, rows, w_all=w_all):
                return objective_and_grad_batch(x, lN, lD, lL, w_all[rows], delta)

            res = lbfgs_batch(fun_grad, x0)
            fr = np.where(np.isfinite(res.f), res.f, np.inf).reshape(nr, k)
            best = np.argmin(fr, axis=1)
            xr = res.x.reshape(nr, k, N_PARAMS)[np.arange(nr), best]
            okr = np.isfinite(fr[np.arange(nr), best])
            thetas[r0 : r0 + nr][okr] = xr[okr]
            bar.update(nr)
    good = np.all(np.isfinite(thetas), axis=1)
    samples = _samples_from_theta(thetas[good])
    good_s = np.all(np.isfinite(samples), axis=1)
    samples = samples[good_s]
    return Bootstrap(
        samples=samples,
        level=float(level),
        seed=int(seed),
        starts=starts,
        n_failed=int(n_resamples - samples.shape[0]),
    )


def _stderr():
    import sys

    return sys.stderr


# -------------------------------------------------------------------------- hold-out


def holdout_top_c(N, D, L, k: int, *, C=None, delta: float = DEFAULT_DELTA, starts=None) -> dict:
    """Fit approach 3 without the k largest-compute runs; predict those.

    C defaults to 6 N D.  Returns {"k", "fit": {...}, "runs": [{"N", "D", "C",
    "observed", "predicted", "rel_error"}], "mean_abs_rel_error"} with
    rel_error = (predicted - observed) / observed, largest C first.
    """
    N, D, L = _as_runs(N, D, L)
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=np.float64).ravel()
    if C.size != N.size:
        raise UsageError("C has a different length from N")
    if k < 1:
        raise UsageError(f"--holdout-top-c needs K >= 1, got {k}")
    if N.size - k < N_PARAMS:
        raise UsageError(
            f"holding out {k} of {N.size} runs leaves {N.size - k}, fewer than the {N_PARAMS} parameters"
        )
    order = np.argsort(-C, kind="stable")
    held, kept = order[:k], order[k:]
    fit = fit_approach3(N[kept], D[kept], L[kept], delta=delta, starts=starts)
    pred = fit.predict(N[held], D[held])
    rel = (pred - L[held]) / L[held]
    runs = [
        {
            "N": float(N[i]),
            "D": float(D[i]),
            "C": float(C[i]),
            "observed": float(L[i]),
            "predicted": float(p),
            "rel_error": float(r),
        }
        for i, p, r in zip(held, pred, rel)
    ]
    return {"k": int(k), "fit": fit.to_dict(), "runs": runs, "mean_abs_rel_error": float(np.mean(np.abs(rel)))}


# ------------------------------------------------------------------------ approach 2


def power_law_fit(x, y) -> tuple[float, float]:
    """(k, p) of y = k x^p by least squares on log y = log k + p log x."""
    lx = np.log(np.asarray(x, dtype=np.float64))
    ly = np.log(np.asarray(y, dtype=np.float64))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise UsageError(f"a power law needs at least 2 distinct x values, got {lx.size}")
    p, lk = np.polyfit(lx, ly, 1)
    return float(math.exp(lk)), float(p)


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


def fit_approach2(N, L, C, *, budgets=None, rtol: float = 0.1, min_runs: int = 3) -> dict:
    """IsoFLOP profiles: per budget a parabola of L against log N, its minimum, then
    N_opt = k_n C^a and D_opt = k_d C^b (D_opt = C / (6 N_opt)).

    Budgets with fewer than ``min_runs`` distinct N, a parabola without a minimum, or a
    minimum outside the budget's sampled N range are listed under "skipped".
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
            skipped.append({"C": float(cb), "reason": f"{np.unique(lnj).size} distinct N < {min_runs}"})
            continue
        p2, p1, p0 = np.polyfit(lnj, lj, 2)
        if not p2 > 0:
            skipped.append({"C": float(cb), "reason": "parabola has no minimum"})
            continue
        x = -p1 / (2 * p2)
        if not lnj.min() <= x <= lnj.max():
            skipped.append({"C": float(cb), "reason": "minimum outside the sampled N range"})
            continue
        n_opt = math.exp(x)
        minima.append(
            {
                "C": float(cb),
                "N_opt": n_opt,
                "D_opt": float(cb / (6 * n_opt)),
                "L_min": float(p0 + p1 * x + p2 * x * x),
                "n_runs": int(sel.sum()),
                "parabola": [float(p2), float(p1), float(p0)],
            }
        )
    if len(minima) < 2:
        raise UsageError(
            f"approach 2 needs at least 2 IsoFLOP budgets with a loss minimum, found {len(minima)} "
            f"(of {len(values)} budgets; skipped: {[s['reason'] for s in skipped]})"
        )
    cs = [m["C"] for m in minima]
    k_n, a = power_law_fit(cs, [m["N_opt"] for m in minima])
    k_d, b = power_law_fit(cs, [m["D_opt"] for m in minima])
    reasons = exponent_reasons(a, "approach 2")
    return {
        "a": a,
        "b": b,
        "k_n": k_n,
        "k_d": k_d,
        "budgets": "given" if budgets is not None else "grouped by C",
        "budget_tol": float(rtol),
        "minima": minima,
        "skipped": skipped,
        "degenerate": bool(reasons),
        "degenerate_reasons": reasons,
    }


# ------------------------------------------------------------------------ approach 1


def fit_approach1(
    curves: Sequence[tuple[float, Iterable[float], Iterable[float]]],
    *,
    n_grid: int = 100,
    min_runs: int = 2,
) -> dict:
    """Approach 1: the lower envelope of training curves.

    ``curves``: (N, flops, loss) per run.  Each curve is interpolated in log-FLOPs on a
    log-spaced grid of ``n_grid`` FLOP values; at each grid point covered by at least
    ``min_runs`` curves the run with the lowest loss gives (N_opt, L_min); then
    N_opt = k_n C^a (and D_opt = C / (6 N_opt) = k_d C^b, so b = 1 - a).

    Raw training curves bias this (losses before the learning rate decays, an envelope
    clamped at the smallest and largest sizes, a step function of few sizes);
    :func:`scaling.law_envelope.fit_approach1_endpoints` is approach 1 on annealed
    endpoints where the sizes bracket the optimum.
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
    d_env = c_env / (6 * n_env)
    k_d, b = power_law_fit(c_env, d_env)
    envelope = [
        {"C": float(c), "N_opt": float(nn), "D_opt": float(dd), "L_min": float(ll)}
        for c, nn, dd, ll in zip(c_env, n_env, d_env, l_env)
    ]
    reasons = exponent_reasons(a, "approach 1")
    return {"a": a, "b": b, "k_n": k_n, "k_d": k_d, "n_runs": len(runs), "envelope": envelope,
            "degenerate": bool(reasons), "degenerate_reasons": reasons}
