"""The fits and checks a sweep's law gets (:func:`fit_group`, one group of runs: a sweep, or one
of its arms), with the compute they cost kept to tens of seconds on one core at 20-30 runs.

- approach 3 (L-BFGS from Hoffmann's grid of 4,500 starts) with bootstrap intervals whose
  refits also start from the whole grid (:attr:`SweepFitOptions.bootstrap` resamples, about
  0.7 s each at 25 runs on one core: 40 of them by default);
- approach 2 (IsoFLOP parabolas) with its residual-bootstrap intervals (cheap: 200 resamples);
- approach 1 on the annealed endpoints (the runs' final validation losses) over the compute where
  the best size is neither the smallest nor the largest, when the runs meet the rule the plan
  printed (:data:`scaling.laws.support.SWEEP`: 3+ sizes with 2+ endpoints of distinct C each);
- approach 3 with the other parameter count (total or non-embedding, :class:`AltCount`);
- the diagnostics of :mod:`scaling.laws.checks` with their verdict, among them the held-out
  budget extrapolation (fit without the largest budget, predict its runs) and the regime check
  against the count-model baseline;
- the seed-to-seed noise beside the law's residual RMS (:class:`Noise`), and each size's
  compute by 6ND and by Chinchilla's Appendix F count (:class:`ComputeRow`).

Pure numpy (the inputs are read by :mod:`scaling.sweep.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.laws import approach1, approach3, bootstrap
from scaling.laws.approach3 import LawFit
from scaling.laws.fit import approach2_with_interval, attempt, diagnose_runs
from scaling.laws.law import DEFAULT_DELTA
from scaling.laws.record import NotRun
from scaling.laws.result import COUNT_COLUMNS, AltCount, Baseline, ComputeRow, FitResult, Noise
from scaling.laws.runs import Runs
from scaling.laws.support import SWEEP

__all__ = ["SweepFitOptions", "DEFAULT_OPTIONS", "fit_group", "compute_rows", "other_count"]


@dataclass(frozen=True)
class SweepFitOptions:
    """The sizes of a sweep's fit (the defaults keep it to tens of seconds at 20-30 runs)."""

    bootstrap: int = 40  # approach-3 resamples, each refitted from ``boot_starts``
    boot_starts: str = "grid"  # "grid": Hoffmann's 4,500 starts; "best": 32 that reached the optimum
    approach2_bootstrap: int = 200  # approach-2 residual resamples
    level: float = 0.95
    seed: int = 0
    delta: float = DEFAULT_DELTA
    starts: np.ndarray | None = None  # approach-3 starts of the fits and refits (None: the full grid)


DEFAULT_OPTIONS = SweepFitOptions()


def other_count(count: str) -> str:
    """The parameter count a law does not use: total <-> nonembed."""
    return "nonembed" if count == "total" else "total"


def compute_rows(N, flops_6nd, flops_chinchilla) -> tuple[ComputeRow, ...]:
    """Per model size (ascending): its runs' compute by 6ND and by Chinchilla's Appendix F count."""
    N, f6, fc = (np.asarray(v, dtype=np.float64).ravel() for v in (N, flops_6nd, flops_chinchilla))
    return tuple(
        ComputeRow(
            N=float(n),
            n_runs=int(np.sum(N == n)),
            flops_6nd=float(f6[N == n].sum()),
            flops_chinchilla=float(fc[N == n].sum()),
        )
        for n in np.unique(N)
    )


def _approach3(runs: Runs, opts: SweepFitOptions):
    why = SWEEP.approach3(runs.N, runs.D)
    if why is not None:
        return NotRun(why), None
    law = attempt(
        lambda: approach3.fit_approach3(runs.N, runs.D, runs.L, delta=opts.delta, starts=opts.starts), optional=True
    )
    if not isinstance(law, LawFit) or not opts.bootstrap:
        return law, None
    boot = bootstrap.bootstrap_approach3(
        runs.N, runs.D, runs.L, law, opts.bootstrap, seed=opts.seed, level=opts.level, starts=opts.boot_starts
    )
    return law, boot


def fit_group(
    runs: Runs,
    *,
    isoflop: bool,
    n_count: str = "total",
    alt_N=None,
    baseline: Baseline | NotRun | None = None,
    compute: tuple[ComputeRow, ...] = (),
    opts: SweepFitOptions = DEFAULT_OPTIONS,
) -> FitResult:
    """Every fit and check of one group of runs (the module docstring); an approach the runs
    cannot support is a not-run note, never an error.  ``alt_N``: the other parameter count per
    run (for :class:`AltCount` and the stability check); ``baseline``: the count models of the
    runs' validation tokens (its ``regime_loss`` is the regime check's threshold)."""
    law, boot = _approach3(runs, opts)
    a2 = a2_ci = None
    if isoflop:
        a2, a2_ci = approach2_with_interval(
            runs, optional=True, n_resamples=opts.approach2_bootstrap, seed=opts.seed, level=opts.level
        )
    why = SWEEP.approach1(runs.N, runs.C)
    a1 = (
        NotRun(why)
        if why is not None
        else attempt(lambda: approach1.fit_approach1_endpoints(runs.N, runs.C, runs.L), optional=True)
    )
    alt = None
    if alt_N is not None and isinstance(law, LawFit):
        alt_fit = attempt(
            lambda: approach3.fit_approach3(alt_N, runs.D, runs.L, delta=opts.delta, starts=opts.starts), optional=True
        )
        other = other_count(n_count)
        alt = AltCount(count=other, n_col=COUNT_COLUMNS[other], fit=alt_fit)
    verdict = None
    if isinstance(law, LawFit) and boot is not None:
        verdict = diagnose_runs(
            runs,
            law,
            boot,
            a2,
            a2_ci,
            baseline=baseline.regime_loss if isinstance(baseline, Baseline) else None,
            alt_fit=alt.fit if alt is not None and isinstance(alt.fit, LawFit) else None,
            n_resamples=opts.approach2_bootstrap,
            seed=opts.seed,
            level=opts.level,
            starts=opts.starts,
        )
    noise = Noise.from_runs(runs.N, runs.D, runs.L, law.predict(runs.N, runs.D) if isinstance(law, LawFit) else None)
    return FitResult(
        approach3=law,
        bootstrap=boot,
        approach2=a2,
        approach2_ci=a2_ci,
        approach1=a1,
        diagnostics=verdict,
        baseline=baseline,
        noise=noise,
        n_count=n_count,
        alt_count=alt,
        compute=compute,
    )
