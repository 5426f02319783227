"""Fitting a table of runs: what to fit (:class:`FitOptions`), the checks made before any
fitting (:func:`validate`), and every requested fit of one set of runs (:func:`fit_runs`) or of
each group (:func:`fit_table`), as typed results (:mod:`scaling.laws.result`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from scaling.errors import UsageError
from scaling.laws import approach1, approach2, approach3, bootstrap, checks, holdout
from scaling.laws.approach1 import EndpointEnvelope, Envelope
from scaling.laws.approach2 import Approach2Bootstrap
from scaling.laws.law import DEFAULT_DELTA, N_PARAMS
from scaling.laws.record import NotRun
from scaling.laws.result import FitOutput, FitResult, Prediction
from scaling.laws.runs import Runs
from scaling.laws.support import FIT_CLI

__all__ = [
    "FitOptions",
    "attempt",
    "validate",
    "fit_runs",
    "fit_table",
    "approach1_from_curves",
    "approach1_from_endpoints",
]

T = TypeVar("T")


@dataclass(frozen=True)
class FitOptions:
    """What to fit: the approaches ('1', '2', '3') and approach 3's extras."""

    approaches: frozenset[str] = frozenset({"3"})
    bootstrap: int = 0  # resamples for approach 3's (and approach 2's) intervals
    ci: float = 0.95
    seed: int = 0
    holdout_top_c: int = 0
    predict_c: tuple[float, ...] = ()
    delta: float = DEFAULT_DELTA
    budget_tol: float = 0.1
    boot_starts: str = "best"
    progress: bool = True
    approach2_optional: bool = False  # an impossible approach 2 is a not-run note, not an error
    diagnostics: bool = False  # the law's checks (scaling.laws.checks); needs bootstrap
    baseline_loss: float | None = None  # the count-model loss for the regime check


def attempt(fit: Callable[[], T], *, optional: bool) -> T | NotRun:
    """``fit()``; when the approach is optional and its data turn out unusable only once fitted,
    the reason as a :class:`NotRun`, so that the other fits still stand."""
    try:
        return fit()
    except UsageError as e:
        if not optional:
            raise
        return NotRun(str(e))


def validate(runs: Runs, opts: FitOptions, *, where: str = "") -> dict[str, NotRun]:
    """Check everything that can be checked before fitting; returns not-run notes for the
    optional approaches these runs cannot support.  UsageError on bad input."""
    pre = f"{where}: " if where else ""
    notes: dict[str, NotRun] = {}
    if "3" in opts.approaches and (why := FIT_CLI.approach3(runs.N, runs.D)) is not None:
        raise UsageError(pre + why)
    if opts.holdout_top_c and len(runs) - opts.holdout_top_c < N_PARAMS:
        raise UsageError(
            f"{pre}--holdout-top-c {opts.holdout_top_c} leaves {len(runs) - opts.holdout_top_c} of "
            f"{len(runs)} runs, fewer than the {N_PARAMS} parameters"
        )
    why = FIT_CLI.approach2(runs.N, runs.C, runs.budget, opts.budget_tol) if "2" in opts.approaches else None
    if why is not None:
        if not opts.approach2_optional:
            raise UsageError(pre + why)
        notes["2"] = NotRun(why)
    return notes


def approach2_with_interval(
    runs: Runs, *, optional: bool, n_resamples: int, rtol: float = 0.1, seed: int = 0, level: float = 0.95
):
    """Approach 2 on ``runs`` (a not-run note when the design cannot support it and ``optional``)
    and, with ``n_resamples``, its residual-bootstrap intervals (a note when the design leaves no
    residuals): ``(fit, intervals)``."""
    a2 = attempt(
        lambda: approach2.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget, rtol=rtol), optional=optional
    )
    a2_ci = None
    if n_resamples and isinstance(a2, approach2.IsoFlopFit):
        a2_ci = attempt(
            lambda: approach2.bootstrap_approach2(
                runs.N, runs.L, runs.C, a2, n_resamples, budgets=runs.budget, rtol=rtol, seed=seed, level=level
            ),
            optional=True,
        )
    return a2, a2_ci


def diagnose_runs(runs: Runs, law, boot, a2, a2_ci, **kw) -> checks.Verdict:
    """The diagnostics (:func:`scaling.laws.checks.diagnose`) of ``runs`` and their approach-3
    ``law`` with its bootstrap ``boot``; approach 2's fit and interval for a are passed on when
    its bootstrap ran (``a2_ci``), else the checks refit it. ``kw``: diagnose's other options."""
    a2_boot = a2_ci if isinstance(a2_ci, Approach2Bootstrap) else None
    return checks.diagnose(
        runs.N,
        runs.D,
        runs.L,
        fit=law,
        ci=boot.ci(),
        C=runs.C,
        budgets=runs.budget,
        approach2=a2 if a2_boot is not None else None,
        approach2_a_interval=None if a2_boot is None else a2_boot.interval("a"),
        **kw,
    )


def fit_runs(runs: Runs, opts: FitOptions, *, skip: Mapping[str, NotRun] | None = None, alt_N=None) -> FitResult:
    """Approaches 3 and 2 as ``opts`` asks, on runs already validated (``skip``: the notes of
    :func:`validate`); ``alt_N``: a second parameter count per run for the diagnostics."""
    skip = skip or {}
    law = boot = hold = None
    preds: tuple[Prediction, ...] = ()
    if "3" in opts.approaches:
        law = approach3.fit_approach3(runs.N, runs.D, runs.L, delta=opts.delta)
        if opts.bootstrap:
            boot = bootstrap.bootstrap_approach3(
                runs.N,
                runs.D,
                runs.L,
                law,
                opts.bootstrap,
                seed=opts.seed,
                level=opts.ci,
                starts=opts.boot_starts,
                progress=opts.progress,
            )
        preds = tuple(Prediction.at(law, c, boot) for c in opts.predict_c)
        if opts.holdout_top_c:
            hold = holdout.holdout_top_c(runs.N, runs.D, runs.L, opts.holdout_top_c, C=runs.C, delta=opts.delta)
    a2 = a2_ci = None
    if "2" in opts.approaches:
        a2, a2_ci = (
            (skip["2"], None)
            if "2" in skip
            else approach2_with_interval(
                runs,
                optional=opts.approach2_optional,
                n_resamples=opts.bootstrap,
                rtol=opts.budget_tol,
                seed=opts.seed,
                level=opts.ci,
            )
        )
    verdict = None
    if opts.diagnostics:
        if boot is None:
            raise UsageError("diagnostics need approach 3's bootstrap intervals")
        verdict = diagnose_runs(
            runs,
            law,
            boot,
            a2,
            a2_ci,
            rtol=opts.budget_tol,
            baseline=opts.baseline_loss,
            alt_N=alt_N,
            n_resamples=opts.bootstrap,
            seed=opts.seed,
            level=opts.ci,
        )
    return FitResult(
        approach3=law,
        bootstrap=boot,
        predictions=preds,
        holdout=hold,
        approach2=a2,
        approach2_ci=a2_ci,
        diagnostics=verdict,
    )


Approach1 = Envelope | EndpointEnvelope | NotRun


def approach1_from_curves(curves, *, optional: bool) -> Approach1:
    """Approach 1 on training curves [(N, flops, loss)], or why not (None: no curves given)."""
    if curves is None:
        return NotRun("no --curves directory given")
    return attempt(lambda: approach1.fit_approach1(curves), optional=optional)


def approach1_from_endpoints(
    sources: Mapping[str | None, tuple], *, required: bool, group_col: str | None = None
) -> dict[str | None, Approach1]:
    """Approach 1 on annealed endpoints ``{group or None: (N, C, L)}``.  A design it cannot
    use is a UsageError (naming the group) when approach 1 is ``required``, else a note."""
    out: dict[str | None, Approach1] = {}
    for key, (n, c, loss) in sources.items():
        try:
            out[key] = approach1.fit_approach1_endpoints(n, c, loss)
        except UsageError as e:
            if required:
                raise UsageError(f"{group_col}={key}: {e}" if key is not None else str(e)) from None
            out[key] = NotRun(str(e))
    return out


def fit_table(
    runs: Runs,
    opts: FitOptions,
    *,
    skips,
    group_col: str | None = None,
    alt_N=None,
    approach1: Mapping[str | None, Approach1] | None = None,
    input: Mapping | None = None,
) -> FitOutput:
    """Every requested fit of a validated table: one :class:`FitResult`, or one per value of
    ``group_col`` (``skips``: :func:`validate`'s notes, per group when grouped).  ``approach1``:
    approach 1's results fitted beforehand, per group value or (key None) over all runs."""
    approach1 = approach1 or {}
    if group_col is None:
        result = fit_runs(runs, opts, skip=skips, alt_N=alt_N)
        if None in approach1:
            result = dataclasses.replace(result, approach1=approach1[None])
        return FitOutput(fit=result, input=input)
    groups = {}
    for value, part in runs.groups().items():
        sel = runs.group == value
        result = fit_runs(part, opts, skip=skips[value], alt_N=None if alt_N is None else alt_N[sel])
        if value in approach1:
            result = dataclasses.replace(result, approach1=approach1[value])
        groups[value] = result
    return FitOutput(groups=groups, group_col=group_col, approach1=approach1.get(None), input=input)
