"""The readable report of a fit, from its typed result."""

from __future__ import annotations

import math

from scaling.laws.approach1 import EndpointEnvelope, Envelope
from scaling.laws.approach2 import Approach2Bootstrap
from scaling.laws.law import DERIVED_NAMES, PARAM_NAMES
from scaling.laws.record import NotRun
from scaling.laws.result import FitOutput, FitResult

__all__ = ["report", "report_output"]


def _g(x, fmt: str = ".6g") -> str:
    """A number as written to the JSON would show it: n/a where the JSON has null."""
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _degenerate(what: str, fit) -> list[str]:
    if not fit.degenerate:
        return []
    return [f"  DEGENERATE {what}: not a valid scaling law ({'; '.join(fit.degenerate_reasons)}); "
            "its exponents and predictions are not to be trusted"]


def _approach3(result: FitResult) -> list[str]:
    law, boot = result.law, result.bootstrap
    lines = [f"approach 3 (Huber delta {law.delta:g}, {law.n_points} runs, {law.n_starts} starts, "
             f"{law.n_starts_at_best} reached the best; objective {law.loss:.6g})"]
    ci = boot.ci() if boot is not None else {}
    for k in PARAM_NAMES + DERIVED_NAMES:
        iv = f"  [{_g(ci[k][0])}, {_g(ci[k][1])}]" if k in ci else ""
        lines.append(f"  {k:>5} = {_g(getattr(law, k))}{iv}")
    if boot is not None:
        lines.append(f"  ({boot.level:.0%} percentile intervals, {boot.n_resamples} resamples)")
    lines += _degenerate("fit (approach 3)", law)
    for p in result.predictions:
        lines.append(f"predict C={p.C:.4g}: N_opt={_g(p.N_opt, '.4g')}  D_opt={_g(p.D_opt, '.4g')}  "
                     f"loss={_g(p.loss, '.5g')}")
    h = result.holdout
    if h is not None:
        lines.append(f"hold-out of the {h.k} largest-compute runs (fit on the rest):")
        lines.append(f"  {'C':>10} {'N':>10} {'D':>10} {'observed':>9} {'predicted':>9} {'rel.err':>8}")
        for r in h.runs:
            lines.append(f"  {r.C:10.4g} {r.N:10.4g} {r.D:10.4g} {r.observed:9.5g} "
                         f"{_g(r.predicted, '9.5g')} {_g(r.rel_error, '+8.4f')}")
        lines.append(f"  mean |rel. error| = {_g(h.mean_abs_rel_error, '.4f')}")
        lines += _degenerate("hold-out fit", h.fit)
    return lines


def _extras(result: FitResult) -> list[str]:
    """Approach 2's intervals, approach 1's endpoint summary and the diagnostics."""
    lines = []
    ci2 = result.approach2_ci
    if isinstance(ci2, Approach2Bootstrap):
        (lo, hi), (blo, bhi) = ci2.interval("a"), ci2.interval("b")
        lines.append(f"  approach 2 {ci2.level:.0%} intervals ({ci2.a.size + ci2.n_failed} residual "
                     f"resamples): a [{lo:.4f}, {hi:.4f}], b [{blo:.4f}, {bhi:.4f}]")
        for j, c in enumerate(ci2.budgets):
            nlo, nhi = ci2.n_opt_interval(j)
            lines.append(f"    C={c:.4g}: N_opt in [{nlo:.4g}, {nhi:.4g}]")
    elif isinstance(ci2, NotRun):
        lines.append(f"  approach 2 intervals not computed: {ci2.reason}")
    a1 = result.approach1
    if isinstance(a1, EndpointEnvelope):
        lo, hi = a1.c_range
        lines.append(f"  (approach 1 on {a1.n_endpoints} annealed endpoints of {a1.n_runs} sizes; optimum "
                     f"bracketed for C in [{lo:.4g}, {hi:.4g}], {a1.grid_fraction:.0%} of the grid)")
    if result.diagnostics is not None:
        lines.append("diagnostics:")
        for c in result.diagnostics.checks:
            mark = "pass" if c.passed else ("FAIL" if c.evaluated else "n/a ")
            lines.append(f"  [{mark}] {c.name}: {c.message}")
        lines.append(f"verdict: {result.diagnostics.message}")
    return lines


def report(result: FitResult, *, title: str = "") -> str:
    """A readable summary of one set of fits (an approach 3 that did not run is left out)."""
    lines = [f"== {title} =="] if title else []
    if result.law is not None:
        lines += _approach3(result)
    a2 = result.approach2
    if isinstance(a2, NotRun):
        lines.append(f"approach 2 not run: {a2.reason}")
    elif a2 is not None:
        lines.append(f"approach 2 (IsoFLOP, {len(a2.minima)} budgets): a = {_g(a2.a, '.4f')}, b = {_g(a2.b, '.4f')}")
        lines += _degenerate("fit (approach 2)", a2)
    a1 = result.approach1
    if isinstance(a1, NotRun):
        lines.append(f"approach 1 not run: {a1.reason}")
    elif a1 is not None:
        lines.append(f"approach 1 (envelope of {a1.n_runs} curves): a = {_g(a1.a, '.4f')}, b = {_g(a1.b, '.4f')}")
        if isinstance(a1, Envelope):
            lines += _degenerate("fit (approach 1)", a1)
    lines += _extras(result)
    return "\n".join(lines)


def report_output(output: FitOutput) -> str:
    """The report of a whole fit: one section per group, titled ``COL = value``."""
    if output.groups is None:
        return report(output.fit)
    text = "\n".join(report(r, title=f"{output.group_col} = {v}") for v, r in output.groups.items())
    if output.approach1 is not None:
        text += "\n" + report(FitResult(approach1=output.approach1))
    return text
