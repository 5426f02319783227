"""A finished sweep's fit: every approach its completed runs support (:func:`fit_sweep`), written
to fit.json with the plots the caller draws (:func:`finalize`), and its printed report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.errors import UsageError
from scaling.io import atomic_write_text, file_lock
from scaling.laws.record import JsonRecord, NotRun
from scaling.laws.report import report, verdict_line
from scaling.laws.result import COUNT_COLUMNS, Baseline, FitOutput
from scaling.laws.runs import Runs, load_runs
from scaling.sweep.baseline import sweep_baselines
from scaling.sweep.diagnose import DEFAULT_OPTIONS, SweepFitOptions, compute_rows, fit_group, other_count
from scaling.sweep.plan import Plan
from scaling.sweep.results import ignored_runs, read_json, rebuild_unlocked

__all__ = ["SweepFit", "Plotter", "fit_sweep", "finalize", "fit_report", "verdict_lines", "load_sweep_runs"]

APPROACH1_INPUT = "annealed endpoints: each completed run's final validation loss at its C"

Plotter = Callable[[Plan, Path, FitOutput], list[Path]]
"""Draws a sweep's plots under DIR/plots from its plan, directory and fits; returns the paths."""


@dataclass(frozen=True)
class SweepFit(JsonRecord):
    """fit.json of a sweep: the fits of its completed runs, and which table they came from."""

    output: FitOutput
    name: str
    spec: str
    results: str
    results_sha256: str
    n_planned: int
    ignored: tuple[str, ...] = ()
    plots: tuple[str, ...] | None = None  # relative to the sweep directory
    plots_error: str | None = None

    def to_dict(self) -> dict:
        sweep = {
            "name": self.name,
            "spec": self.spec,
            "results": self.results,
            "results_sha256": self.results_sha256,
            "n_planned": self.n_planned,
            "ignored": list(self.ignored),
        }
        if self.plots is not None:
            sweep["plots"] = list(self.plots)
        if self.plots_error is not None:
            sweep["plots_error"] = self.plots_error
        return {**self.output.to_dict(), "sweep": sweep}


def _results_digest(out: Path) -> str:
    return hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()[:16]


def _count_col(plan: Plan, count: str | None = None) -> str:
    return COUNT_COLUMNS[count or plan.spec.fit_count]


def load_sweep_runs(plan: Plan, out: Path, *, n_col: str | None = None, c_col: str | None = None) -> Runs:
    """The completed runs of the sweep's results.csv as the fit reads them (UsageError when none):
    N is the spec's ``fit.count`` (``n_col`` another column), C = 6 N D (``c_col``: a FLOPs column)."""
    isoflop = plan.spec.design == "isoflop"
    return load_runs(
        Path(out) / "results.csv",
        n_col=n_col or _count_col(plan),
        d_col="tokens",
        c_col=c_col,
        loss_col=plan.spec.fit_loss,
        budget_col="budget" if isoflop else None,
        group_col="arm" if plan.has_arms else None,
    )


def finalize(plan: Plan, out: Path, *, plot: Plotter | None = None, echo=print, force: bool = False) -> SweepFit | None:
    """Rebuild results.csv, then fit.json (and the plots, drawn by ``plot``) from it, all under the
    results lock (so a concurrent shard cannot change the table in between); nothing is refitted
    when fit.json already describes the same results.csv (returns None). Only the plan's runs
    count; fit.json names the others under ``sweep.ignored``. Returns the fit written."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        rebuild_unlocked(out, plan)
        digest = _results_digest(out)
        old = read_json(out / "fit.json")
        if not force and old and old.get("sweep", {}).get("results_sha256") == digest:
            return None
        output = fit_sweep(plan, out)
        fit = SweepFit(
            output=output,
            name=plan.spec.name,
            spec=plan.spec.path,
            results=str(out / "results.csv"),
            results_sha256=digest,
            n_planned=len(plan.runs),
            ignored=tuple(ignored_runs(out, plan)),
        )
        if plot is not None:
            try:
                paths = plot(plan, out, output)
                fit = dataclasses.replace(fit, plots=tuple(str(p.relative_to(out)) for p in paths))
            except Exception as e:  # noqa: BLE001 - a plot failing must not lose the fit; fit.json names it
                fit = dataclasses.replace(fit, plots_error=f"{type(e).__name__}: {e}")
        atomic_write_text(out / "fit.json", json.dumps(fit.to_dict(), indent=2) + "\n")
    echo(fit_report(fit))
    return fit


def _same_rows(runs: Runs, other: Runs) -> bool:
    return len(other) == len(runs) and np.array_equal(other.L, runs.L) and np.array_equal(other.D, runs.D)


def _optional_runs(plan: Plan, out: Path, runs: Runs, **cols) -> Runs | None:
    """The runs read with other N or C columns (None when the table lacks them)."""
    try:
        other = load_sweep_runs(plan, out, **cols)
    except UsageError:
        return None
    return other if _same_rows(runs, other) else None


def fit_sweep(
    plan: Plan,
    out: Path,
    *,
    options: SweepFitOptions | None = None,
    baselines: Mapping[str | None, Baseline | NotRun] | None = None,
) -> FitOutput:
    """Fit the completed runs of results.csv (per arm when the sweep has arms) as
    :func:`scaling.sweep.diagnose.fit_group` does; never raises for too few points: the reasons
    are not-run notes (``error`` when no approach ran).  ``options``: the fit's sizes (default:
    :data:`~scaling.sweep.diagnose.DEFAULT_OPTIONS` with the spec's ``fit.bootstrap``); ``baselines``:
    the count-model baseline per arm (key None without arms); computed (and cached in the sweep
    directory) when not given."""
    out = Path(out)
    if options is None:
        options = dataclasses.replace(DEFAULT_OPTIONS, bootstrap=plan.spec.fit_bootstrap)
    try:
        runs = load_sweep_runs(plan, out)
    except UsageError as e:
        return FitOutput(error=f"no fit: {e}")
    if baselines is None:
        baselines = sweep_baselines(plan, out)
    count = plan.spec.fit_count
    alt = _optional_runs(plan, out, runs, n_col=_count_col(plan, other_count(count)))
    f6 = _optional_runs(plan, out, runs, c_col="flops_6nd")
    fc = _optional_runs(plan, out, runs, c_col="flops_chinchilla")
    isoflop = plan.spec.design == "isoflop"
    inp = {
        "results": str(out / "results.csv"),
        "n_col": _count_col(plan),
        "d_col": "tokens",
        "loss_col": plan.spec.fit_loss,
        "n_runs": len(runs),
        "approach1": APPROACH1_INPUT,
        "bootstrap": {
            "approach3": options.bootstrap,
            "approach3_starts": options.boot_starts,
            "approach2": options.approach2_bootstrap,
        },
    }

    def group(sel, key):
        part = runs if sel is None else runs.subset(sel)
        compute = (
            ()
            if f6 is None or fc is None
            else compute_rows(part.N, f6.C if sel is None else f6.C[sel], fc.C if sel is None else fc.C[sel])
        )
        return fit_group(
            part,
            isoflop=isoflop,
            n_count=count,
            alt_N=None if alt is None else (alt.N if sel is None else alt.N[sel]),
            baseline=baselines.get(key),
            compute=compute,
            opts=options,
        )

    if plan.has_arms:
        groups = {arm: group(runs.group == arm, arm) for arm in sorted(set(runs.group.tolist()))}
        output = FitOutput(groups=groups, group_col="arm", input=inp)
    else:
        output = FitOutput(fit=group(None, None), input=inp)
    if not output.ran:
        output = dataclasses.replace(
            output, error="too few completed runs to fit any scaling law (see the not_run notes)"
        )
    return output


def verdict_lines(output: FitOutput) -> list[str]:
    """The verdict line of each fitted group (one line without arms): every diagnostic passed,
    or each failing check with its number and threshold."""
    if output.error is not None:
        return ["verdict: FAIL: no scaling law was fitted"]
    results = output.groups if output.groups is not None else {None: output.fit}
    lines = []
    for key, r in results.items():
        line = verdict_line(r.diagnostics, why=None if r.diagnostics is not None else _no_diagnostics(r))
        lines.append(line if key is None else line.replace("verdict: ", f"verdict (arm = {key}): ", 1))
    return lines


def fit_report(fit: SweepFit) -> str:
    """The printed report of a sweep's fit: each group's fits and checks, a note for each
    approach 3 that did not run, and last the verdict line (per arm when the sweep has arms)."""
    output = fit.output
    if output.error is not None:
        return "\n".join([f"fit: {output.error}"] + verdict_lines(output))
    results = output.groups if output.groups is not None else {None: output.fit}
    parts = []
    for key, r in results.items():
        title = "fit" if key is None else f"arm = {key}"
        parts.append(report(r, title=title, verdict=False))
        if isinstance(r.approach3, NotRun):
            parts.append(f"{'' if key is None else title + ': '}approach 3 not run: {r.approach3.reason}")
    return "\n".join(parts + verdict_lines(output))


def _no_diagnostics(r) -> str:
    if isinstance(r.approach3, NotRun):
        return "approach 3 did not run, so no diagnostic could"
    return "no approach-3 bootstrap intervals, which the diagnostics need"
