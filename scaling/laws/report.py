"""The readable report of a fit, from its typed result."""

from __future__ import annotations

import math

from scaling.laws.approach1 import EndpointEnvelope, Envelope
from scaling.laws.approach2 import Approach2Bootstrap
from scaling.laws.approach3 import LawFit
from scaling.laws.law import DERIVED_NAMES, PARAM_NAMES
from scaling.laws.record import NotRun
from scaling.laws.result import COUNT_COLUMNS, Baseline, FitOutput, FitResult
from scaling.laws.verdict import Check, Verdict

__all__ = ["report", "report_output", "verdict_line", "extrapolation_lines"]


def _g(x, fmt: str = ".6g") -> str:
    """A number as written to the JSON would show it: n/a where the JSON has null."""
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _degenerate(what: str, fit) -> list[str]:
    if not fit.degenerate:
        return []
    return [
        f"  DEGENERATE {what}: not a valid scaling law ({'; '.join(fit.degenerate_reasons)}); "
        "its exponents and predictions are not to be trusted"
    ]


def _approach3(result: FitResult) -> list[str]:
    law, boot = result.law, result.bootstrap
    lines = [
        f"approach 3 (Huber delta {law.delta:g}, {law.n_points} runs, {law.n_starts} starts, "
        f"{law.n_starts_at_best} reached the best; objective {law.loss:.6g})"
    ]
    ci = boot.ci() if boot is not None else {}
    for k in PARAM_NAMES + DERIVED_NAMES:
        iv = f"  [{_g(ci[k][0])}, {_g(ci[k][1])}]" if k in ci else ""
        lines.append(f"  {k:>5} = {_g(getattr(law, k))}{iv}")
    if boot is not None:
        lines.append(f"  ({boot.level:.0%} percentile intervals, {boot.n_resamples} resamples)")
    lines += _degenerate("fit (approach 3)", law)
    for p in result.predictions:
        lines.append(
            f"predict C={p.C:.4g}: N_opt={_g(p.N_opt, '.4g')}  D_opt={_g(p.D_opt, '.4g')}  loss={_g(p.loss, '.5g')}"
        )
    h = result.holdout
    if h is not None:
        lines.append(f"hold-out of the {h.k} largest-compute runs (fit on the rest):")
        lines.append(f"  {'C':>10} {'N':>10} {'D':>10} {'observed':>9} {'predicted':>9} {'rel.err':>8}")
        for r in h.runs:
            lines.append(
                f"  {r.C:10.4g} {r.N:10.4g} {r.D:10.4g} {r.observed:9.5g} "
                f"{_g(r.predicted, '9.5g')} {_g(r.rel_error, '+8.4f')}"
            )
        worst = max((abs(r.rel_error) for r in h.runs), default=float("nan"))
        lines.append(f"  mean |rel. error| = {_g(h.mean_abs_rel_error, '.4f')}, worst = {_g(worst, '.4f')}")
        lines += _degenerate("hold-out fit", h.fit)
    return lines


def _extras(result: FitResult) -> list[str]:
    """Approach 2's intervals, approach 1's endpoint summary and the diagnostics."""
    lines = []
    ci2 = result.approach2_ci
    if isinstance(ci2, Approach2Bootstrap):
        (lo, hi), (blo, bhi) = ci2.interval("a"), ci2.interval("b")
        lines.append(
            f"  approach 2 {ci2.level:.0%} intervals ({ci2.a.size + ci2.n_failed} residual "
            f"resamples): a [{lo:.4f}, {hi:.4f}], b [{blo:.4f}, {bhi:.4f}]"
        )
        for j, c in enumerate(ci2.budgets):
            nlo, nhi = ci2.n_opt_interval(j)
            lines.append(f"    C={c:.4g}: N_opt in [{nlo:.4g}, {nhi:.4g}]")
    elif isinstance(ci2, NotRun):
        lines.append(f"  approach 2 intervals not computed: {ci2.reason}")
    a1 = result.approach1
    if isinstance(a1, EndpointEnvelope):
        lo, hi = a1.c_range
        lines.append(
            f"  (approach 1 on {a1.n_endpoints} annealed endpoints of {a1.n_runs} sizes; optimum "
            f"bracketed for C in [{lo:.4g}, {hi:.4g}], {a1.grid_fraction:.0%} of the grid)"
        )
    lines += _sweep_extras(result)
    if result.diagnostics is not None:
        lines += extrapolation_lines(result.diagnostics)
        lines.append("diagnostics:")
        for c in result.diagnostics.checks:
            mark = "pass" if c.passed else ("FAIL" if c.evaluated else "n/a ")
            lines.append(f"  [{mark}] {c.name}: {c.message}")
    return lines


def _sweep_extras(result: FitResult) -> list[str]:
    """The parameter counts' fits, the noise, the count-model baseline and the compute counts."""
    lines = []
    if result.n_count is not None:
        lines.append(
            f"N is {COUNT_COLUMNS.get(result.n_count, result.n_count)} ({result.n_count} parameters); C = 6 N D"
        )
    alt = result.alt_count
    if alt is not None:
        if isinstance(alt.fit, LawFit):
            f = alt.fit
            main = result.law.a if result.law is not None else float("nan")
            lines.append(
                f"  with N = {alt.n_col} ({alt.count}): E = {_g(f.E, '.4g')}, alpha = {_g(f.alpha, '.4f')}, "
                f"beta = {_g(f.beta, '.4f')}, a = {_g(f.a, '.4f')} (a = {_g(main, '.4f')} with "
                f"{result.n_count})"
            )
        else:
            lines.append(f"  with N = {alt.n_col} ({alt.count}): not fitted: {alt.fit.reason}")
    nz = result.noise
    if nz is not None:
        rms = _g(nz.residual_rms, ".4g")
        if nz.sigma is None:
            lines.append(f"noise: no (N, D) point has two seeds, sigma not measured; the law's residual RMS = {rms}")
        else:
            ratio = "" if nz.residual_rms is None else f" (ratio {nz.residual_rms / nz.sigma:.2f})"
            lines.append(
                f"noise: seed-to-seed sigma = {_g(nz.sigma, '.4g')} from {nz.n_pairs} repeated point(s); "
                f"the law's residual RMS = {rms}{ratio}"
            )
    b = result.baseline
    if isinstance(b, Baseline):
        comp = "" if b.regime_loss is None else f"; the regime check compares with {b.regime_loss:.4f}"
        lines.append(
            f"count-model baseline ({b.split}, {b.tokens:,} tokens, {b.units}): unigram {b.unigram:.4f}, "
            f"bigram {b.bigram:.4f}, trigram {b.trigram:.4f}{comp}"
        )
    elif isinstance(b, NotRun):
        lines.append(f"count-model baseline: {b.reason}")
    if result.compute:
        lines.append("compute per size, C by 6ND and by Chinchilla's Appendix F count:")
        lines.append(f"  {'N':>10} {'runs':>4} {'C (6ND)':>10} {'C (App. F)':>10} {'F / 6ND':>7}")
        for r in result.compute:
            lines.append(f"  {r.N:10.4g} {r.n_runs:4d} {r.flops_6nd:10.4g} {r.flops_chinchilla:10.4g} {r.ratio:7.3f}")
    return lines


def extrapolation_lines(v: Verdict) -> list[str]:
    """The held-out-budget extrapolation as the diagnostics measured it."""
    c = {x.name: x for x in v.checks}
    mean, worst, ratio = (c.get(f"extrapolation.{k}") for k in ("mean_error", "worst_error", "n_opt_ratio"))
    if mean is None:
        return []
    if not mean.evaluated:
        return [f"held-out budget extrapolation not evaluated: {mean.message.removeprefix('not evaluated: ')}"]
    d = mean.details
    lines = [
        f"held-out budget extrapolation (approach 3 on the {d['n_fitted']} runs below C = {d['budget']:.4g}, "
        f"predicting its {d['n_held_out']} runs): mean |rel. error| = {mean.value:.2%}, "
        f"worst = {worst.value:.2%}"
    ]
    if ratio is not None and ratio.evaluated:
        r = ratio.details
        lines.append(
            f"  N_opt at that budget: predicted {r['N_opt_predicted']:.4g}, IsoFLOP vertex "
            f"{r['N_opt_vertex']:.4g} (ratio {ratio.value:.3f})"
        )
    elif ratio is not None:
        lines.append(f"  N_opt ratio {ratio.message}")
    return lines


def _failure(c: Check) -> str:
    thr = f"[{c.threshold[0]:g}, {c.threshold[1]:g}]" if c.relation == "in" else f"{c.threshold:g}"
    return f"{c.name} ({_g(c.value, '.4g')}, needs {c.relation} {thr})"


def verdict_line(v: Verdict | None, *, why: str | None = None) -> str:
    """One line: every diagnostic passed, or each failing check with its number and threshold
    (and each one not evaluated); ``why``: the reason when there are no diagnostics."""
    if v is None:
        return f"verdict: FAIL: no diagnostics ({why or 'not computed'})"
    if v.passed:
        return f"verdict: {v.message}"
    failed = [_failure(c) for c in v.checks if c.evaluated and not c.passed]
    missing = [c.name for c in v.checks if not c.evaluated]  # each one's reason is in the list above
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed: " + ", ".join(failed))
    if missing:
        parts.append(f"{len(missing)} not evaluated: " + ", ".join(missing))
    return "verdict: FAIL: " + "; ".join(parts) + f" (of {len(v.checks)} checks)"


def report(result: FitResult, *, title: str = "", verdict: bool = True) -> str:
    """A readable summary of one set of fits (an approach 3 that did not run is left out),
    ending with the verdict line when the diagnostics ran (``verdict``: print it)."""
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
    if verdict and result.diagnostics is not None:
        lines.append(verdict_line(result.diagnostics))
    return "\n".join(lines)


def report_output(output: FitOutput) -> str:
    """The report of a whole fit: one section per group, titled ``COL = value``."""
    if output.groups is None:
        return report(output.fit)
    text = "\n".join(report(r, title=f"{output.group_col} = {v}") for v, r in output.groups.items())
    if output.approach1 is not None:
        text += "\n" + report(FitResult(approach1=output.approach1))
    return text
