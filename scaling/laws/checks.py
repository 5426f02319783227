"""Diagnostics of a fitted scaling law: is it in its regime, non-degenerate, stable, do the
approaches agree, does it extrapolate?  Pure numpy/scipy; no file I/O.

Each check is a :class:`~scaling.laws.verdict.Check` (name, passed, the number it
compares, the threshold, a message); :func:`~scaling.laws.verdict.verdict` gathers them and
names every check that failed or could not be evaluated.  A check that cannot be evaluated
(an input is missing: no baseline loss, no size with three token counts, ...) does not pass:
a law is trusted only when every check ran and passed.  The checks, with the defaults of
:class:`~scaling.laws.verdict.Thresholds`:

- ``regime.below_baseline``: every fitted run's loss is below the count-model (trigram)
  baseline loss of the same validation split (:mod:`scaling.laws.count_models`);
- ``regime.diminishing_returns``: at fixed N, the gain per doubling of D shrinks: with
  g_k = (L_k - L_{k+1}) / log2(D_{k+1} / D_k) over a size's token counts in order,
  g_{k+1} - g_k <= ``gain_tol`` nats (L convex in log D, as E + A/N^alpha + B/D^beta is;
  the tolerance absorbs measurement noise).  Token counts of one size within a factor
  ``d_merge_factor`` (sqrt 2) of each other are merged first (mean L at the geometric
  mean D): a slope over a tiny step in D is noise divided by that step;
- ``non_degenerate.E_lower``: the lower end of E's bootstrap interval > 0.2;
- ``non_degenerate.alpha``, ``non_degenerate.beta``: within [0.1, 1.0];
- ``non_degenerate.a_width``: a's bootstrap interval narrower than 0.25;
- ``stable.huber_delta``: a moves by at most 0.05 across Huber delta in {1e-3, 1e-2,
  least squares (delta 1e6: every residual in the quadratic part)};
- ``stable.n_count``: a moves by at most 0.1 between two parameter counts (for example
  total and non-embedding parameters);
- ``agreement.a_overlap`` and ``agreement.a_delta``: approach 2's and approach 3's
  intervals for a overlap, and |a_2 - a_3| <= 0.15;
- ``extrapolation.mean_error``, ``extrapolation.worst_error``,
  ``extrapolation.n_opt_ratio``: fit approach 3 without the largest IsoFLOP budget's runs
  and predict them: mean |relative error| <= 1%, worst <= 2%, and that budget's N_opt
  from the held-out fit within a factor 1.5 of the budget's own IsoFLOP vertex.

:func:`diagnose` runs every check from runs and fits; the ``check_*`` functions take the
numbers directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from scaling.errors import UsageError
from scaling.laws import approach3
from scaling.laws.approach2 import IsoFlopFit, bootstrap_approach2, fit_approach2, isoflop_groups
from scaling.laws.approach3 import LawFit
from scaling.laws.law import DEFAULT_DELTA, N_PARAMS, PARAM_NAMES
from scaling.laws.verdict import Check, Thresholds, Verdict, compared, unevaluated, verdict

__all__ = [
    "check_regime",
    "check_non_degenerate",
    "check_stability",
    "check_agreement",
    "check_extrapolation",
    "a_across_deltas",
    "diagnose",
]


def check_regime(N, D, L, *, baseline: float | None, thresholds: Thresholds = Thresholds()) -> list[Check]:
    """``regime.below_baseline`` (max loss < baseline) and ``regime.diminishing_returns``
    (largest increase of the gain per doubling of D at fixed N <= gain_tol)."""
    N, D, L = (np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L))
    out = []
    if baseline is None:
        out.append(unevaluated("regime.below_baseline", "<", None, "no count-model baseline loss given"))
    else:
        worst = int(np.argmax(L))
        out.append(
            compared(
                "regime.below_baseline",
                "highest run loss",
                L[worst],
                "<",
                float(baseline),
                {
                    "n_runs": int(L.size),
                    "n_at_or_above": int(np.sum(L >= baseline)),
                    "worst_run": {"N": float(N[worst]), "D": float(D[worst])},
                },
            )
        )
    increases, per_size = [], []
    for n in np.unique(N):
        sel = N == n
        inv, ds = isoflop_groups(D[sel], rtol=thresholds.d_merge_factor - 1)
        if ds.size < 3:
            continue
        ls = np.bincount(inv, weights=L[sel]) / np.bincount(inv)
        gains = -np.diff(ls) / np.diff(np.log2(ds))
        inc = np.diff(gains)
        increases.append(inc)
        per_size.append({"N": float(n), "gains_per_doubling": gains.tolist(), "max_increase": float(inc.max())})
    if not increases:
        out.append(
            unevaluated(
                "regime.diminishing_returns", "<=", thresholds.gain_tol, "no model size has 3 or more token counts"
            )
        )
    else:
        allinc = np.concatenate(increases)
        out.append(
            compared(
                "regime.diminishing_returns",
                "largest increase of the gain per doubling of D (nats)",
                allinc.max(),
                "<=",
                thresholds.gain_tol,
                {
                    "n_sizes": len(per_size),
                    "n_increases_above_tol": int(np.sum(allinc > thresholds.gain_tol)),
                    "sizes": per_size,
                },
            )
        )
    return out


def check_non_degenerate(
    E_interval, alpha: float, beta: float, a_interval, thresholds: Thresholds = Thresholds()
) -> list[Check]:
    """E's interval above e_min, alpha and beta in the exponent range, a's interval narrow."""
    lo_e, hi_e = (float(v) for v in E_interval)
    lo_a, hi_a = (float(v) for v in a_interval)
    rng = tuple(thresholds.exponent_range)
    return [
        compared(
            "non_degenerate.E_lower",
            "lower end of E's interval",
            lo_e,
            ">",
            thresholds.e_min,
            {"E_interval": [lo_e, hi_e]},
        ),
        compared("non_degenerate.alpha", "alpha", alpha, "in", rng),
        compared("non_degenerate.beta", "beta", beta, "in", rng),
        compared(
            "non_degenerate.a_width",
            "width of a's interval",
            hi_a - lo_a,
            "<",
            thresholds.a_width_max,
            {"a_interval": [lo_a, hi_a]},
        ),
    ]


def check_stability(
    a_by_delta: Mapping[float, float], a_counts: Sequence[float] | None = None, thresholds: Thresholds = Thresholds()
) -> list[Check]:
    """``stable.huber_delta``: max - min of a over the Huber deltas; ``stable.n_count``:
    |a| difference between two fits with different parameter counts (when given)."""
    vals = np.array(list(a_by_delta.values()), dtype=np.float64)
    details = {"a_by_delta": {f"{d:g}": float(v) for d, v in a_by_delta.items()}}
    out = [
        compared(
            "stable.huber_delta",
            "range of a across Huber deltas",
            np.ptp(vals),
            "<=",
            thresholds.delta_shift_max,
            details,
        )
    ]
    if a_counts is None:
        out.append(
            unevaluated(
                "stable.n_count", "<=", thresholds.count_shift_max, "no fit with a second parameter count given"
            )
        )
    else:
        a1, a2 = (float(v) for v in a_counts)
        out.append(
            compared(
                "stable.n_count",
                "|a| difference between the two parameter counts",
                abs(a1 - a2),
                "<=",
                thresholds.count_shift_max,
                {"a": [a1, a2]},
            )
        )
    return out


def check_agreement(
    a2: float, a2_interval, a3: float, a3_interval, thresholds: Thresholds = Thresholds()
) -> list[Check]:
    """Approach 2's and 3's intervals for a overlap (overlap length >= 0); |a2 - a3| small."""
    lo2, hi2 = (float(v) for v in a2_interval)
    lo3, hi3 = (float(v) for v in a3_interval)
    details = {
        "approach2": {"a": float(a2), "interval": [lo2, hi2]},
        "approach3": {"a": float(a3), "interval": [lo3, hi3]},
    }
    return [
        compared(
            "agreement.a_overlap",
            "overlap of the intervals for a (negative: a gap)",
            min(hi2, hi3) - max(lo2, lo3),
            ">=",
            0.0,
            details,
        ),
        compared("agreement.a_delta", "|a2 - a3|", abs(float(a2) - float(a3)), "<=", thresholds.agreement_max, details),
    ]


def check_extrapolation(
    N,
    D,
    L,
    C=None,
    *,
    budgets=None,
    rtol: float = 0.1,
    delta: float = DEFAULT_DELTA,
    starts=None,
    thresholds: Thresholds = Thresholds(),
) -> list[Check]:
    """Fit approach 3 without the largest budget's runs and predict them (module docstring)."""
    N, D, L = (np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L))
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=np.float64).ravel()
    names = ("extrapolation.mean_error", "extrapolation.worst_error", "extrapolation.n_opt_ratio")
    rels = ("<=", "<=", "<=")
    thr = (thresholds.mean_error_max, thresholds.worst_error_max, thresholds.n_opt_ratio_max)
    labels, values = isoflop_groups(C, budgets, rtol)
    if values.size < 2:
        return [
            unevaluated(n, r, t, f"{values.size} IsoFLOP budget(s): nothing to hold out")
            for n, r, t in zip(names, rels, thr)
        ]
    top = values.size - 1
    held = labels == top
    kept = ~held & ((labels >= 0) | (C < C[held].min()))  # runs outside the budgets count when below the top
    if kept.sum() < N_PARAMS + 1:
        return [
            unevaluated(n, r, t, f"only {int(kept.sum())} runs below the largest budget")
            for n, r, t in zip(names, rels, thr)
        ]
    fit = approach3.fit_approach3(N[kept], D[kept], L[kept], delta=delta, starts=starts)
    rel = (fit.predict(N[held], D[held]) - L[held]) / L[held]
    c_top = float(values[top])
    details = {
        "budget": c_top,
        "n_held_out": int(held.sum()),
        "n_fitted": int(kept.sum()),
        "rel_errors": rel.tolist(),
        "fit": {k: getattr(fit, k) for k in PARAM_NAMES},
    }
    out = [
        compared(names[0], "mean |relative error| on the held-out budget", np.mean(np.abs(rel)), "<=", thr[0], details),
        compared(names[1], "worst |relative error| on the held-out budget", np.max(np.abs(rel)), "<=", thr[1], details),
    ]
    x = np.log(N[held])
    why = None
    if np.unique(x).size < 3:
        why = f"the largest budget has {np.unique(x).size} distinct sizes, fewer than a parabola's 3"
    else:
        p2, p1, _ = np.polyfit(x, L[held], 2)
        if not p2 > 0:
            why = "the largest budget's IsoFLOP parabola has no minimum"
        elif not x.min() <= -p1 / (2 * p2) <= x.max():
            why = "the largest budget's IsoFLOP vertex is outside its sampled sizes"
    if why is not None:
        out.append(unevaluated(names[2], rels[2], thr[2], why))
        return out
    vertex = math.exp(-p1 / (2 * p2))
    predicted = float(fit.optimal(c_top)[0])
    ratio = max(predicted / vertex, vertex / predicted)
    out.append(
        compared(
            names[2],
            "N_opt predicted / IsoFLOP vertex (or its inverse)",
            ratio,
            "<=",
            thr[2],
            {"budget": c_top, "N_opt_predicted": predicted, "N_opt_vertex": vertex},
        )
    )
    return out


def a_across_deltas(
    N, D, L, deltas: Sequence[float] = Thresholds.deltas, *, starts=None, known: Mapping[float, float] | None = None
) -> dict[float, float]:
    """Approach 3's a refitted at each Huber delta (``known``: a already fitted at some deltas)."""
    known = dict(known or {})
    return {d: known[d] if d in known else approach3.fit_approach3(N, D, L, delta=d, starts=starts).a for d in deltas}


def diagnose(
    N,
    D,
    L,
    *,
    fit: LawFit,
    ci: Mapping[str, Sequence[float]],
    C=None,
    budgets=None,
    rtol: float = 0.1,
    baseline: float | None = None,
    alt_N=None,
    alt_fit: LawFit | None = None,
    approach2: IsoFlopFit | None = None,
    approach2_a_interval=None,
    n_resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    starts=None,
    thresholds: Thresholds = Thresholds(),
) -> Verdict:
    """Every check on runs (N, D, L) and their approach-3 ``fit`` with its bootstrap
    intervals ``ci`` ({"E": [lo, hi], "a": [lo, hi], ...}, as :meth:`Bootstrap.ci`).

    ``alt_N``: a second parameter count per run, refitted for ``stable.n_count`` (or
    ``alt_fit``: that refit, already made).
    ``approach2``/``approach2_a_interval``: approach 2's fit and its interval for a
    (both computed here when not given, with ``n_resamples`` residual resamples).
    ``starts``: approach-3 starts of the refits (default the full grid).
    """
    N, D, L = (np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L))
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=np.float64).ravel()
    for k in ("E", "a"):
        if k not in ci:
            raise UsageError(f"diagnostics need approach 3's bootstrap interval for {k}")
    checks = check_regime(N, D, L, baseline=baseline, thresholds=thresholds)
    checks += check_non_degenerate(ci["E"], fit.alpha, fit.beta, ci["a"], thresholds)
    a_delta = a_across_deltas(N, D, L, thresholds.deltas, starts=starts, known={fit.delta: fit.a})
    a_counts = None
    if alt_fit is None and alt_N is not None:
        alt_fit = approach3.fit_approach3(np.asarray(alt_N, dtype=np.float64), D, L, delta=fit.delta, starts=starts)
    if alt_fit is not None:
        a_counts = (fit.a, alt_fit.a)
    checks += check_stability(a_delta, a_counts, thresholds)
    try:
        if approach2 is None:
            approach2 = fit_approach2(N, L, C, budgets=budgets, rtol=rtol)
        if approach2_a_interval is None:
            approach2_a_interval = bootstrap_approach2(
                N, L, C, approach2, n_resamples, budgets=budgets, rtol=rtol, seed=seed, level=level
            ).interval("a")
    except UsageError as e:  # approach 2 impossible on this design: the agreement is not evaluated
        checks += [
            unevaluated("agreement.a_overlap", ">=", 0.0, str(e)),
            unevaluated("agreement.a_delta", "<=", thresholds.agreement_max, str(e)),
        ]
    else:
        checks += check_agreement(approach2.a, approach2_a_interval, fit.a, ci["a"], thresholds)
    checks += check_extrapolation(
        N, D, L, C, budgets=budgets, rtol=rtol, delta=fit.delta, starts=starts, thresholds=thresholds
    )
    return verdict(checks)
