"""Approach 3: the law L(N, D) fitted to every run as Hoffmann et al. did.

Minimise the *sum* over runs of ``Huber_delta(LSE(a - alpha log N, b - beta log D, e) -
log L)`` with ``delta = 1e-3`` by L-BFGS from every start of their grid
(:func:`hoffmann_grid`, 4,500 starts), keeping the best; ``A, B, E = exp(a, b, e)``.  The
runs of L-BFGS are done together, vectorised over the starts
(:func:`scaling.laws.lbfgs.lbfgs_batch`: one numpy evaluation of the objective and its
analytic gradient for every still-running start per step), and L-BFGS then goes on from the
best point with tighter tolerances.  On Chinchilla's data this reaches the optimum of a
plain loop of ``scipy.optimize.minimize(method="L-BFGS-B")`` over the grid (Epoch AI's
re-run: A = 477.8, B = 2143.9, E = 1.8172, alpha = 0.3473, beta = 0.3672); its speed
against that loop is measured by ``benchmarks/fit_speed.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from scaling.errors import UsageError
from scaling.laws import lbfgs
from scaling.laws.law import DEFAULT_DELTA, N_PARAMS, as_runs, compute_optimal, degenerate_reasons, frontier, law_loss
from scaling.laws.record import JsonRecord, finite_or_none

__all__ = [
    "LawFit",
    "huber",
    "objective",
    "objective_and_grad_batch",
    "hoffmann_grid",
    "fit_approach3",
]


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
    sums of w c x1 / s, w c x2 / s, w c / s.  Rows are processed in cache-sized chunks; a
    row whose exponent would overflow falls back to the max-shifted form. Each row's values
    are the same whatever other rows the batch holds.
    """
    theta_b5 = np.asarray(theta_b5, dtype=np.float64)
    nb = theta_b5.shape[0]
    f = np.empty(nb)
    g = np.empty((nb, N_PARAMS))
    m_lN, m_lD = -lN, -lD
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
        safe = (x1.max(axis=1) < 700.0) & (x2.max(axis=1) < 700.0)  # False for NaN too
        if not safe.all():  # the rows whose exponent would overflow, shifted; the others as below
            rows = np.arange(sl.start, sl.stop)
            if not safe.any():
                f[sl], g[sl] = _objective_and_grad_shifted(th, lN, lD, lL, wc, delta)
                continue
            over = rows[~safe]
            f[over], g[over] = _objective_and_grad_shifted(th[~safe], lN, lD, lL, wc[~safe] if per_row else wc, delta)
            f[rows[safe]], g[rows[safe]] = objective_and_grad_batch(
                th[safe], lN, lD, lL, wc[safe] if per_row else wc, delta, chunk=chunk
            )
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
        # row sums by einsum, not BLAS (whose kernel, so its rounding, depends on the batch's size)
        g[sl, 0] = x1.sum(axis=1)
        g[sl, 3] = np.einsum("bn,n->b", x1, m_lN)
        g[sl, 1] = x2.sum(axis=1)
        g[sl, 4] = np.einsum("bn,n->b", x2, m_lD)
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
        [
            (dh * x1).sum(1),
            (dh * x2).sum(1),
            (dh * x3).sum(1),
            np.einsum("bn,n->b", dh * x1, -lN),
            np.einsum("bn,n->b", dh * x2, -lD),
        ],
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
    rows = [(a, b, e, al, be) for al, be, e, a, b in itertools.product(alphas, alphas, es, abs_, abs_)]
    return np.array(rows, dtype=np.float64)


@dataclass(frozen=True)
class LawFit(JsonRecord):
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
            "a": finite_or_none(self.a),
            "b": finite_or_none(self.b),
            "G": finite_or_none(self.G),
            "loss": self.loss,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "n_starts_at_best": self.n_starts_at_best,
            "delta": self.delta,
            "degenerate": self.degenerate,
            "degenerate_reasons": list(self.degenerate_reasons),
        }

    @classmethod
    def from_theta(cls, theta, **kw) -> LawFit:
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
    of :func:`hoffmann_grid`), all at once, keeps the best and (``polish``) runs L-BFGS on
    from it with tighter tolerances.
    """
    N, D, L = as_runs(N, D, L)
    if not delta > 0:
        raise UsageError(f"Huber delta must be > 0, got {delta}")
    x0 = hoffmann_grid() if starts is None else np.asarray(starts, dtype=np.float64).reshape(-1, N_PARAMS)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    w = np.ones((1, N.size))

    def fun_grad(x, rows):
        return objective_and_grad_batch(x, lN, lD, lL, w, delta)

    res = lbfgs.lbfgs_batch(fun_grad, x0)
    f = np.where(np.isfinite(res.f), res.f, np.inf)
    i = int(np.argmin(f))
    x_best, f_best = res.x[i].copy(), float(f[i])
    if not np.isfinite(f_best):
        raise RuntimeError("approach 3: no start reached a finite objective")
    if polish:  # a tighter L-BFGS run from the best point (scipy's L-BFGS-B gives the same)
        pol = lbfgs.lbfgs_batch(fun_grad, x_best[None, :], ftol=1e-15, gtol=1e-10, maxiter=2000)
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
