"""What ``python -m analysis.fit`` adds beyond the plain fits: approach 1 on annealed
endpoints (``--approach1-from endpoints``), approach 2's bootstrap intervals (with
``--bootstrap``) and the law's diagnostics (``--diagnostics``).

JSON keys added (nothing existing changes):

- ``approach2``: ``ci_level``, ``ci: {"a", "b"}``, ``bootstrap: {"n_resamples", "seed",
  "method", "n_failed"}``, ``budget_ci: [{"C", "N_opt": [lo, hi], "D_opt": [lo, hi],
  "n_no_minimum"}]``, or ``ci_not_run: reason`` when the design gives no residuals;
- ``approach1`` from endpoints: the keys of :func:`scaling.law_envelope.fit_approach1_endpoints`;
- ``diagnostics``: :meth:`scaling.law_checks.Verdict.to_dict` (``passed``, ``verdict``,
  ``failed``, ``not_evaluated``, ``checks``).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass

import numpy as np

from analysis.endpoints import load_endpoints
from scaling import law_checks, law_envelope, law_isoflop, laws
from scaling.errors import UsageError

__all__ = ["CheckOptions", "add_arguments", "options", "alt_counts", "approach1_endpoints", "extend", "report_lines"]

DEFAULT_ALT_N_COL = "n_params_nonembed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--approach1-from", choices=("curves", "endpoints"), default="curves",
                   help="approach 1's input: the envelope of raw training curves (--curves DIR), or annealed "
                        "endpoints only (each run's final evaluated loss or its metrics lines marked endpoint, "
                        "from --curves DIR; without it, the results rows), used where the sizes bracket the optimum")
    p.add_argument("--diagnostics", action="store_true",
                   help="check the law (regime, non-degenerate, stable, agreement, extrapolation) and give a "
                        "verdict; needs --bootstrap")
    p.add_argument("--baseline-loss", type=float, default=None, metavar="L",
                   help="count-model (trigram) loss on the same validation split, in the loss column's units, "
                        "for the regime diagnostic")
    p.add_argument("--alt-n-col", default=None, metavar="COL",
                   help=f"a second parameter count for the stability diagnostic (default {DEFAULT_ALT_N_COL} "
                        "when the CSV has it)")


@dataclass(frozen=True)
class CheckOptions:
    approach1_from: str = "curves"
    diagnostics: bool = False
    baseline_loss: float | None = None
    alt_n_col: str | None = None


def options(args, bootstrap: int) -> CheckOptions:
    """Validate the flags of :func:`add_arguments` (UsageError before any compute)."""
    if args.diagnostics and not bootstrap:
        raise UsageError("--diagnostics needs --bootstrap K (the checks use approach 3's intervals)")
    if args.baseline_loss is not None:
        if not args.diagnostics:
            raise UsageError("--baseline-loss is used by --diagnostics; pass both")
        if not (np.isfinite(args.baseline_loss) and args.baseline_loss > 0):
            raise UsageError(f"--baseline-loss must be a positive loss, got {args.baseline_loss}")
    if args.alt_n_col is not None and not args.diagnostics:
        raise UsageError("--alt-n-col is used by --diagnostics; pass both")
    return CheckOptions(args.approach1_from, args.diagnostics, args.baseline_loss, args.alt_n_col)


def alt_counts(load_runs, args, runs, extra: CheckOptions) -> np.ndarray | None:
    """The second parameter count per run (rows as ``runs``) for ``stable.n_count``, or None."""
    if not extra.diagnostics:
        return None
    col = extra.alt_n_col
    if col is None:
        with open(args.results, newline="") as f:
            header = next(csv.reader(f), [])
        if DEFAULT_ALT_N_COL not in header or args.n_col == DEFAULT_ALT_N_COL:
            return None
        col = DEFAULT_ALT_N_COL
    alt = load_runs(args.results, n_col=col, d_col=args.d_col, c_col=args.c_col, loss_col=args.loss_col,
                    budget_col=args.budget_col, group_col=args.group_col, drop_top_loss=args.drop_top_loss)
    if len(alt) != len(runs) or not np.array_equal(alt.L, runs.L):
        raise UsageError(f"--alt-n-col {col}: rows differ from the --n-col rows")
    return alt.N


def approach1_endpoints(args, runs, *, required: bool) -> tuple[dict, list | None]:
    """Approach 1 on annealed endpoints, before the slow fits (so bad input stops early).

    Returns ({group or None: approach-1 dict}, annealed curves for the envelope plot):
    from ``--curves DIR`` one result for all runs; else from the results rows, one per
    ``--group-col`` value.  A design approach 1 cannot use is a UsageError when approach 1
    was asked for alone (``required``), else a ``not_run`` note.
    """
    if args.curves:
        sources = {None: load_endpoints(args.curves)}
    elif runs.group is not None:
        sources = {v: (runs.N[runs.group == v], runs.C[runs.group == v], runs.L[runs.group == v])
                   for v in sorted(set(runs.group.tolist()))}
    else:
        sources = {None: (runs.N, runs.C, runs.L)}
    out = {}
    for key, (n, c, loss) in sources.items():
        try:
            out[key] = law_envelope.fit_approach1_endpoints(n, c, loss)
        except UsageError as e:
            if required:
                raise UsageError(f"{args.group_col}={key}: {e}" if key is not None else str(e)) from None
            out[key] = {"not_run": str(e)}
    curves = law_envelope.annealed_curves(*sources[None]) if None in sources else None
    return out, curves


def _law_fit(r: dict) -> laws.LawFit:
    return laws.LawFit(E=r["E"], A=r["A"], B=r["B"], alpha=r["alpha"], beta=r["beta"], loss=r["loss"],
                       n_points=r["n_points"], n_starts=r["n_starts"], n_starts_at_best=r["n_starts_at_best"],
                       delta=r["delta"])


def extend(result: dict, runs, opts, extra: CheckOptions, alt_N=None) -> None:
    """Add approach 2's intervals (with a bootstrap) and the diagnostics to one fit dict."""
    a2 = result.get("approach2")
    a2_interval = None
    if opts.bootstrap and a2 is not None and "minima" in a2:
        try:
            boot2 = law_isoflop.bootstrap_approach2(runs.N, runs.L, runs.C, a2, opts.bootstrap, budgets=runs.budget,
                                                    rtol=opts.budget_tol, seed=opts.seed, level=opts.ci)
        except UsageError as e:  # e.g. every budget has exactly 3 sizes: no residuals
            a2["ci_not_run"] = str(e)
        else:
            d = boot2.to_dict()
            a2.update(ci_level=d["ci_level"], ci=d["ci"], bootstrap=d["bootstrap"], budget_ci=d["budgets"])
            a2_interval = boot2.interval("a")
    if extra.diagnostics:
        v = law_checks.diagnose(
            runs.N, runs.D, runs.L, fit=_law_fit(result), ci=result["ci"], C=runs.C, budgets=runs.budget,
            rtol=opts.budget_tol, baseline=extra.baseline_loss, alt_N=alt_N,
            approach2=a2 if a2_interval is not None else None, approach2_a_interval=a2_interval,
            n_resamples=opts.bootstrap, seed=opts.seed, level=opts.ci,
        )
        result["diagnostics"] = v.to_dict()


def report_lines(result: dict) -> list[str]:
    """Report lines for the keys this module adds (none when they are absent)."""
    lines = []
    a2 = result.get("approach2") or {}
    if "ci" in a2:
        lo, hi = a2["ci"]["a"]
        blo, bhi = a2["ci"]["b"]
        lines.append(f"  approach 2 {a2['ci_level']:.0%} intervals ({a2['bootstrap']['n_resamples']} residual "
                     f"resamples): a [{lo:.4f}, {hi:.4f}], b [{blo:.4f}, {bhi:.4f}]")
        for m in a2["budget_ci"]:
            lines.append(f"    C={m['C']:.4g}: N_opt in [{m['N_opt'][0]:.4g}, {m['N_opt'][1]:.4g}]")
    elif "ci_not_run" in a2:
        lines.append(f"  approach 2 intervals not computed: {a2['ci_not_run']}")
    a1 = result.get("approach1") or {}
    if a1.get("input") == "annealed endpoints":
        lo, hi = a1["c_range"]
        lines.append(f"  (approach 1 on {a1['n_endpoints']} annealed endpoints of {a1['n_runs']} sizes; optimum "
                     f"bracketed for C in [{lo:.4g}, {hi:.4g}], {a1['grid_fraction']:.0%} of the grid)")
    diag = result.get("diagnostics")
    if diag is not None:
        lines.append("diagnostics:")
        for c in diag["checks"]:
            mark = "pass" if c["passed"] else ("FAIL" if c["evaluated"] else "n/a ")
            lines.append(f"  [{mark}] {c['name']}: {c['message']}")
        lines.append(f"verdict: {diag['verdict']}")
    return lines
