"""A finished sweep's fit (fit.json), plots and printed report."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from scaling.errors import UsageError
from scaling.io import atomic_write_text, file_lock
from scaling.sweep_plan import _MIN_APPROACH3, Plan
from scaling.sweep_results import _read_json, _rebuild_unlocked, collect_rows, ignored_runs


# ----------------------------------------------------------------------------- fit and plots


def _results_digest(out: Path) -> str:
    return hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()[:16]


def finalize(plan: Plan, out: Path, *, echo=print, force: bool = False) -> dict:
    """Rebuild results.csv, then fit.json and plots/ from it, all under the results lock (so a
    concurrent shard cannot change the table in between); the fit is skipped when fit.json
    already describes the same results.csv. Only the plan's runs count; fit.json names the
    others under ``sweep.ignored``. Returns the fit dict."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        _rebuild_unlocked(out, plan)
        digest = _results_digest(out)
        old = _read_json(out / "fit.json")
        if not force and old and old.get("sweep", {}).get("results_sha256") == digest:
            return old
        result = fit_sweep(plan, out)
        result["sweep"] = {"name": plan.spec.name, "spec": plan.spec.path, "results": str(out / "results.csv"),
                           "results_sha256": digest, "n_planned": len(plan.runs),
                           "ignored": ignored_runs(out, plan)}
        try:
            paths = write_plots(plan, out, result)
            result["sweep"]["plots"] = [str(p.relative_to(out)) for p in paths]
        except Exception as e:  # a plot failing must not lose the fit
            result["sweep"]["plots_error"] = f"{type(e).__name__}: {e}"
        atomic_write_text(out / "fit.json", json.dumps(result, indent=2) + "\n")
    echo(fit_report(result))
    return result


def _fit_group(runs, curves, isoflop: bool) -> dict:
    """Every approach the data supports on one group of runs; the others get a not_run note."""
    from analysis import fit as fit_lib
    from scaling import laws

    out: dict = {}
    n_distinct_d = len(set(runs.D.tolist()))
    if len(runs) >= _MIN_APPROACH3 and len(set(runs.N.tolist())) >= 2 and n_distinct_d >= 2:
        try:
            out.update(fit_lib.fit_runs(runs, fit_lib.FitOptions(approaches=frozenset({"3"}), progress=False)))
        except UsageError as e:
            out["approach3"] = {"not_run": str(e)}
    else:
        out["approach3"] = {"not_run": f"{len(runs)} completed runs; approach 3 needs at least {_MIN_APPROACH3} "
                                       f"(more than the law's {laws.N_PARAMS} parameters) over 2+ sizes and 2+ "
                                       f"token counts"}
    if isoflop:
        try:
            out["approach2"] = laws.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget)
        except UsageError as e:
            out["approach2"] = {"not_run": str(e)}
    try:
        out["approach1"] = laws.fit_approach1(curves)
    except UsageError as e:
        out["approach1"] = {"not_run": str(e)}
    return out


def fit_sweep(plan: Plan, out: Path) -> dict:
    """Fit the completed runs of results.csv (per arm when the sweep has arms); never raises
    for too few points: the reason goes into the JSON (``error`` when no approach ran)."""
    from analysis import fit as fit_lib

    out = Path(out)
    isoflop = plan.spec.design == "isoflop"
    loss_col = plan.spec.fit_loss
    try:
        runs = fit_lib.load_runs(out / "results.csv", n_col="n_params", d_col="tokens", loss_col=loss_col,
                                 budget_col="budget" if isoflop else None,
                                 group_col="arm" if plan.has_arms else None)
    except UsageError as e:
        return {"error": f"no fit: {e}"}
    rows = {r["run_id"]: r for r in collect_rows(out, plan)}
    ids = [rid for rid, r in rows.items() if r.get("status") == "completed"]
    curves_by_id = {rid: c for rid in ids if (c := _curve(out / "runs" / rid, rows[rid])) is not None}
    inp = {"results": str(out / "results.csv"), "n_col": "n_params", "d_col": "tokens", "loss_col": loss_col,
           "n_runs": len(runs), "curves": "runs/*/metrics.jsonl (training loss against 6ND FLOPs)"}
    if plan.has_arms:
        result: dict = {"group_col": "arm", "groups": {}, "input": inp}
        for arm in sorted(set(runs.group.tolist())):
            part = runs.subset(runs.group == arm)
            curves = [c for rid, c in curves_by_id.items() if rows[rid].get("arm") == arm]
            result["groups"][arm] = _fit_group(part, curves, isoflop)
        ran = [g for g in result["groups"].values() if _ran(g)]
    else:
        result = _fit_group(runs, list(curves_by_id.values()), isoflop)
        result["input"] = inp
        ran = [result] if _ran(result) else []
    if not ran:
        result["error"] = "too few completed runs to fit any scaling law (see the not_run notes)"
    return result


def _ran(r: dict) -> bool:
    return "E" in r or "minima" in (r.get("approach2") or {}) or "envelope" in (r.get("approach1") or {})


def _curve(run_dir: Path, row: dict):
    """(N, flops, loss) of a run's training curve from metrics.jsonl, or None."""
    import numpy as np

    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return None
    fl, lo = [], []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("loss") is not None and rec.get("flops") and math.isfinite(rec["loss"]):
            fl.append(float(rec["flops"]))
            lo.append(float(rec["loss"]))
    if len(fl) < 2:
        return None
    return float(row["n_params"]), np.array(fl), np.array(lo)


def write_plots(plan: Plan, out: Path, result: dict) -> list[Path]:
    """plots/: training curves, loss against N per D, IsoFLOP curves, and the fit's plots."""
    from analysis import fit as fit_lib
    from analysis import plots as fit_plots
    from analysis import sweep_plots

    out = Path(out)
    plots_dir = out / "plots"
    isoflop = plan.spec.design == "isoflop"
    paths: list[Path] = []
    fits = result.get("groups") or ({None: result} if "error" not in result else {})
    if fits:
        runs = fit_lib.load_runs(out / "results.csv", n_col="n_params", d_col="tokens", loss_col=plan.spec.fit_loss,
                                 budget_col="budget" if isoflop else None,
                                 group_col="arm" if plan.has_arms else None)
        for arm, r in fits.items():
            part = runs if arm is None else runs.subset(runs.group == arm)
            paths += fit_plots.make_all(plots_dir if arm is None else plots_dir / arm, part, _for_plots(r))
    rows = collect_rows(out, plan)
    for arm in sorted({r.get("arm") for r in rows}, key=str):
        sub = [r for r in rows if r.get("arm") == arm]
        fit = fits.get(arm, {}) if fits else {}
        paths += sweep_plots.write_sweep_plots(plots_dir if arm is None else plots_dir / arm, out / "runs", sub,
                                               fit, loss_col=plan.spec.fit_loss, isoflop=isoflop)
    return paths


def _for_plots(r: dict) -> dict:
    """The fit dict without the not_run notes (analysis.plots expects fitted approaches only)."""
    return {k: v for k, v in r.items() if not (isinstance(v, dict) and "not_run" in v)}


def fit_report(result: dict) -> str:
    from analysis import fit as fit_lib

    if "error" in result:
        text = f"fit: {result['error']}"
    elif "groups" in result:
        text = "\n".join(fit_lib.report(_report_view(r), title=f"arm = {a}") for a, r in result["groups"].items())
    else:
        text = fit_lib.report(_report_view(result), title="fit")
    notes = []
    for title, r in (result.get("groups") or {"": result}).items():
        for k in ("approach3", "approach2", "approach1"):
            v = r.get(k)
            if isinstance(v, dict) and "not_run" in v and k == "approach3":
                notes.append(f"{title + ': ' if title else ''}approach 3 not run: {v['not_run']}")
    return "\n".join([text] + notes)


def _report_view(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "approach3"}
