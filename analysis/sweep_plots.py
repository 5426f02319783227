"""A sweep's plots (``experiments.sweep`` passes :func:`plot_sweep` to the sweep as its
plotter; it is called when fit.json is written).  Under DIR/plots/ (per arm under
plots/<arm>/ when the sweep has arms):

- the fit's plots (:mod:`analysis.plots`): ``isoflop.png`` (IsoFLOP profiles with both
  approaches' curves, bands and vertices), ``optimal_n.png`` (the frontier N_opt(C) and
  D_opt(C) with bands and the runs' compute range), ``residuals.png`` (approach 3's residuals
  against C, the held-out runs marked), ``frontier.png``, ``pred_vs_obs.png``
- ``training_curves.png``: training loss against tokens per run, cooldown branches forking
  from their parents, final validation losses marked (:mod:`analysis.run_plots`)
- ``loss_vs_n.png``: final loss against N per token count D, and against D per size N
- ``arms_vs_compute.png`` (in plots/, when the arms differ in ``train.objective``): held-out
  bits per byte of the predicted tokens against C = 6ND per arm, comparable across objectives
  (:mod:`analysis.objective_plots`)
- ``lr_scan.png`` (in plots/, once): the learning-rate scan of OUT/lr_scan/ and the rule of
  OUT/lr_rule.json
- ``skipped.json``: ``{plot name: why it was not drawn}`` for each plot whose input is
  missing (or whose drawing failed): a missing input never fails the sweep

Losses are in nats per byte when the sweep's tokenizer is ``byte`` (bits per byte for a
``val_bpb`` fit), else nats per token.  Tables are read from results.csv, which the sweep
rebuilds just before it calls the plotter.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from analysis import objective_plots
from analysis.plot_style import log_colors, sci
from analysis.plots import fit_figures, save_figures
from analysis.run_plots import lr_scan, num, training_curves
from scaling.errors import UsageError
from scaling.laws.result import FitOutput, FitResult
from scaling.sweep import Plan, load_sweep_runs

__all__ = ["plot_sweep", "units", "loss_vs_n", "read_rows"]

LOSS_NAMES = {
    "val_loss": "final validation loss",
    "final_train_loss": "final training loss",
    "val_bpb": "final validation loss",
}
SKIPPED = "skipped.json"


def units(plan: Plan) -> tuple[str, str]:
    """(unit of the fitted loss, unit of the training loss) of the sweep's tokenizer."""
    data = getattr(getattr(plan, "base", None), "data", None)
    per = "byte" if getattr(data, "tokenizer", None) == "byte" else "token"
    fit_unit = "bits/byte" if plan.spec.fit_loss == "val_bpb" else f"nats/{per}"
    return fit_unit, f"nats/{per}"


def read_rows(path: Path) -> list[dict]:
    """The rows of a results.csv (empty when it is missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def read_rule(path: Path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def loss_vs_n(rows: list[dict], loss_col: str, ylabel: str) -> Figure | None:
    """Left: final loss against N, runs with the same token count D joined. Right: final loss
    against D, one line per model size N. None when no completed run has the loss."""
    done = [
        r
        for r in rows
        if r.get("status") == "completed"
        and math.isfinite(num(r.get(loss_col)))
        and num(r.get("n_params")) > 0
        and num(r.get("tokens")) > 0
    ]
    if not done:
        return None
    fig = Figure(figsize=(12, 5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    other_name = {"D": "N", "N": "D"}
    for axis, key, other, name, cmap, xlabel in (
        (ax, "tokens", "n_params", "D", "plasma", "parameters N"),
        (ax2, "n_params", "tokens", "N", "viridis", "training tokens D"),
    ):
        values = sorted({num(r[key]) for r in done})
        if len(values) > 10:  # too many lines to name: the runs coloured by the value, with a colour bar
            sc = axis.scatter(
                [num(r[other]) for r in done],
                [num(r[loss_col]) for r in done],
                s=16,
                cmap=cmap,
                c=[math.log10(num(r[key])) for r in done],
            )
            fig.colorbar(sc, ax=axis).set_label(f"log10 {name}")
            axis.set_xscale("log")
            axis.set_xlabel(xlabel)
            axis.set_title(f"final loss against {other_name[name]} (coloured by {name})", fontsize=10)
            continue
        for v, col in zip(values, log_colors(values, cmap)):
            sel = sorted((r for r in done if num(r[key]) == v), key=lambda r: num(r[other]))
            axis.plot(
                [num(r[other]) for r in sel],
                [num(r[loss_col]) for r in sel],
                "o-" if len(sel) > 1 else "o",
                color=col,
                ms=4,
                lw=1,
                label=f"{name} = {sci(v)}",
            )
        axis.legend(fontsize=8, title="token count" if name == "D" else "model size", title_fontsize=8)
        axis.set_title(f"final loss against {other_name[name]} (a line per {name})", fontsize=10)
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def _fits(fit: FitOutput) -> dict:
    """The fits by arm (None: the one fit), {} when there is none."""
    if getattr(fit, "error", None) is not None:
        return {}
    try:
        return dict(fit.results)
    except (AttributeError, TypeError):
        return {}


class _Sheet:
    """The figures of one plots directory and why the others were not drawn."""

    def __init__(self, out: Path):
        self.out, self.figs, self.skipped = out, {}, {}

    def draw(self, name: str, make, missing: str) -> None:
        """Draw ``make()`` as ``name``; None from it is skipped with ``missing``, an exception
        with its message (a plot must never fail the sweep)."""
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001 - recorded in skipped.json
            self.skipped[name] = f"failed: {type(e).__name__}: {e}"
            return
        if fig is None:
            self.skipped[name] = missing
        else:
            self.figs[name] = fig

    def write(self, dpi: int) -> list[Path]:
        """The PNGs, skipped.json (removed when nothing was skipped), and no stale PNG of a
        skipped plot; returns the paths written."""
        self.out.mkdir(parents=True, exist_ok=True)
        paths = save_figures(self.figs, self.out, dpi)
        for name in self.skipped:
            (self.out / f"{name}.png").unlink(missing_ok=True)
        sk = self.out / SKIPPED
        if self.skipped:
            sk.write_text(json.dumps(self.skipped, indent=2, sort_keys=True) + "\n")
            paths.append(sk)
        else:
            sk.unlink(missing_ok=True)
        return paths


def _fit_plots(sheet: _Sheet, runs, result, ylabel: str) -> None:
    """The fit's plots (the runs of each IsoFLOP budget alone when nothing was fitted)."""
    if runs is None:
        for name in ("isoflop", "optimal_n", "residuals"):
            sheet.skipped[name] = "no completed runs with a loss to fit"
        return
    try:
        figs, skipped = fit_figures(runs, FitResult() if result is None else result, ylabel=ylabel)
    except Exception as e:  # noqa: BLE001 - recorded in skipped.json
        sheet.skipped["fit_plots"] = f"failed: {type(e).__name__}: {e}"
        return
    sheet.figs.update(figs)
    sheet.skipped.update(skipped)


def plot_sweep(plan: Plan, out: Path, fit: FitOutput, *, dpi: int = 130) -> list[Path]:
    """Draw the sweep's plots under DIR/plots (see the module docstring); returns the paths written."""
    out = Path(out)
    plots_dir = out / "plots"
    fit_unit, train_unit = units(plan)
    ylabel = f"{LOSS_NAMES.get(plan.spec.fit_loss, plan.spec.fit_loss)} ({fit_unit})"
    rows = read_rows(out / "results.csv")
    fits = _fits(fit)
    try:
        runs = load_sweep_runs(plan, out)
        parts = runs.groups() if plan.has_arms else {None: runs}
    except (UsageError, OSError, KeyError, ValueError):
        parts = {}
    arms = sorted({r.get("arm") for r in rows} - {None, ""} | set(fits) - {None}) if plan.has_arms else [None]
    paths: list[Path] = []
    for arm in arms:
        sheet = _Sheet(plots_dir if arm is None else plots_dir / str(arm))
        sub = [r for r in rows if not plan.has_arms or r.get("arm") == arm]
        _fit_plots(sheet, parts.get(arm), fits.get(arm), ylabel)
        sheet.draw(
            "training_curves",
            lambda sub=sub: training_curves(sub, out / "runs", unit=train_unit),
            "no run has a training curve (runs/*/metrics.jsonl)",
        )
        sheet.draw(
            "loss_vs_n",
            lambda sub=sub: loss_vs_n(sub, plan.spec.fit_loss, ylabel),
            f"no completed run with a {plan.spec.fit_loss} in results.csv",
        )
        if arm is None:
            _lr_plot(sheet, out, fit_unit)
        paths += sheet.write(dpi)
    if plan.has_arms:
        sheet = _Sheet(plots_dir)
        _lr_plot(sheet, out, fit_unit)
        objectives = objective_plots.arm_objectives(plan)
        if len(set(objectives.values())) > 1:  # arms of different train.objective
            sheet.draw(
                "arms_vs_compute",
                lambda: objective_plots.arms_vs_compute(rows, objectives),
                "no completed run with val_bpb and flops_6nd in results.csv",
            )
        paths += sheet.write(dpi)
    return paths


def _lr_plot(sheet: _Sheet, out: Path, unit: str) -> None:
    scan, rule_path = out / "lr_scan" / "results.csv", out / "lr_rule.json"
    if not scan.is_file() or not rule_path.is_file():
        missing = " and ".join(str(p.relative_to(out)) for p in (scan, rule_path) if not p.is_file())
        sheet.skipped["lr_scan"] = f"no learning-rate scan: {missing} missing"
        return
    rule = read_rule(rule_path)
    if rule is None:
        sheet.skipped["lr_scan"] = "lr_rule.json is not a JSON object"
        return
    sheet.draw(
        "lr_scan", lambda: lr_scan(read_rows(scan), rule, unit=unit), "lr_rule.json lists no scanned size with points"
    )
