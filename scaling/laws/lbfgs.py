"""A general batched L-BFGS: many independent smooth minimisations at once, in numpy.

Each step evaluates the objective and gradient of every problem still running in one call,
so the cost of a batch is the sum of its problems' iterations, not the maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchResult", "lbfgs_batch"]


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
