"""A finished sweep's fit: every approach its completed runs support (:func:`fit_sweep`), written
to fit.json with the plots the caller draws (:func:`finalize`), and its printed report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.errors import UsageError
from scaling.io import atomic_write_text, file_lock
from scaling.laws import approach1, approach2, approach3
from scaling.laws.fit import attempt
from scaling.laws.record import JsonRecord, NotRun
from scaling.laws.report import report
from scaling.laws.result import FitOutput, FitResult
from scaling.laws.runs import Runs, load_runs
from scaling.laws.support import SWEEP
from scaling.run_curves import read_curve
from scaling.sweep.plan import Plan
from scaling.sweep.results import collect_rows, ignored_runs, read_json, rebuild_unlocked

__all__ = ["SweepFit", "Plotter", "fit_sweep", "finalize", "fit_report", "load_sweep_runs"]

CURVES = "runs/*/metrics.jsonl (training loss against 6ND FLOPs)"

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
        sweep = {"name": self.name, "spec": self.spec, "results": self.results, "results_sha256": self.results_sha256,
                 "n_planned": self.n_planned, "ignored": list(self.ignored)}
        if self.plots is not None:
            sweep["plots"] = list(self.plots)
        if self.plots_error is not None:
            sweep["plots_error"] = self.plots_error
        return {**self.output.to_dict(), "sweep": sweep}


def _results_digest(out: Path) -> str:
    return hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()[:16]


def load_sweep_runs(plan: Plan, out: Path) -> Runs:
    """The completed runs of the sweep's results.csv as the fit reads them (UsageError when none)."""
    isoflop = plan.spec.design == "isoflop"
    return load_runs(Path(out) / "results.csv", n_col="n_params", d_col="tokens", loss_col=plan.spec.fit_loss,
                     budget_col="budget" if isoflop else None, group_col="arm" if plan.has_arms else None)


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
        fit = SweepFit(output=output, name=plan.spec.name, spec=plan.spec.path, results=str(out / "results.csv"),
                       results_sha256=digest, n_planned=len(plan.runs), ignored=tuple(ignored_runs(out, plan)))
        if plot is not None:
            try:
                paths = plot(plan, out, output)
                fit = dataclasses.replace(fit, plots=tuple(str(p.relative_to(out)) for p in paths))
            except Exception as e:  # noqa: BLE001 - a plot failing must not lose the fit; fit.json names it
                fit = dataclasses.replace(fit, plots_error=f"{type(e).__name__}: {e}")
        atomic_write_text(out / "fit.json", json.dumps(fit.to_dict(), indent=2) + "\n")
    echo(fit_report(fit))
    return fit


def _fit_group(runs: Runs, curves: list, isoflop: bool) -> FitResult:
    """Every approach the data support on one group of runs; the others get a not-run note."""
    why = SWEEP.approach3(runs.N, runs.D)
    law = NotRun(why) if why is not None else attempt(
        lambda: approach3.fit_approach3(runs.N, runs.D, runs.L), optional=True)
    a2 = attempt(lambda: approach2.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget), optional=True) \
        if isoflop else None
    a1 = attempt(lambda: approach1.fit_approach1(curves), optional=True)
    return FitResult(approach3=law, approach2=a2, approach1=a1)


def fit_sweep(plan: Plan, out: Path) -> FitOutput:
    """Fit the completed runs of results.csv (per arm when the sweep has arms); never raises
    for too few points: the reasons are not-run notes (``error`` when no approach ran)."""
    out = Path(out)
    try:
        runs = load_sweep_runs(plan, out)
    except UsageError as e:
        return FitOutput(error=f"no fit: {e}")
    rows = {r["run_id"]: r for r in collect_rows(out, plan)}
    ids = [rid for rid, r in rows.items() if r.get("status") == "completed"]
    curves_by_id = {rid: c for rid in ids if (c := _curve(out / "runs" / rid, rows[rid])) is not None}
    isoflop = plan.spec.design == "isoflop"
    inp = {"results": str(out / "results.csv"), "n_col": "n_params", "d_col": "tokens", "loss_col": plan.spec.fit_loss,
           "n_runs": len(runs), "curves": CURVES}
    if plan.has_arms:
        groups = {arm: _fit_group(part, [c for rid, c in curves_by_id.items() if rows[rid].get("arm") == arm], isoflop)
                  for arm, part in runs.groups().items()}
        output = FitOutput(groups=groups, group_col="arm", input=inp)
    else:
        output = FitOutput(fit=_fit_group(runs, list(curves_by_id.values()), isoflop), input=inp)
    if not output.ran:
        output = dataclasses.replace(output, error="too few completed runs to fit any scaling law "
                                                   "(see the not_run notes)")
    return output


def _curve(run_dir: Path, row: dict):
    """(N, flops, loss) of a run's training curve (finite losses at non-zero FLOPs), or None."""
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return None
    fl, lo = read_curve(p, strict=False)
    ok = np.isfinite(lo) & (fl != 0) if fl.size else np.zeros(0, dtype=bool)
    if ok.sum() < 2:
        return None
    return float(row["n_params"]), fl[ok], lo[ok]


def fit_report(fit: SweepFit) -> str:
    """The printed report of a sweep's fit, with a note for each approach 3 that did not run."""
    output = fit.output
    if output.error is not None:
        text = f"fit: {output.error}"
    elif output.groups is not None:
        text = "\n".join(report(r, title=f"arm = {a}") for a, r in output.groups.items())
    else:
        text = report(output.fit, title="fit")
    notes = []
    for title, r in (output.groups or {"": output.fit}).items():
        if r is not None and isinstance(r.approach3, NotRun):
            notes.append(f"{title + ': ' if title else ''}approach 3 not run: {r.approach3.reason}")
    return "\n".join([text] + notes)

