"""Plots of a sweep's runs (matplotlib, Agg figures; no pyplot state):

- ``training_curves.png``: training loss against FLOPs (6ND so far) for every run, log-log,
  coloured by model size N
- ``loss_vs_n.png``: final loss against N, one line per token count D (and against D, one
  line per N)
- ``isoflop.png`` (IsoFLOP designs, when the fit's own IsoFLOP plot could not be drawn because
  approach 2 found no parabola minima): loss against N per FLOP budget with the lowest run of
  each budget marked

:func:`plot_sweep` writes these and the fit's plots (:func:`analysis.plots.make_all`: IsoFLOP
parabolas and minima, frontier, ...); ``experiments.sweep`` hands it to the sweep, which calls
it when it writes fit.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from analysis.plots import make_all, save_figures
from scaling.laws.result import FitOutput, FitResult
from scaling.run_curves import read_curve
from scaling.sweep import Plan, collect_rows, load_sweep_runs


def _num(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def _training_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(flops, training loss) of a run's metrics.jsonl lines with a finite positive loss and FLOPs."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return np.zeros(0), np.zeros(0)
    fl, lo = read_curve(p, strict=False)
    ok = np.isfinite(fl) & np.isfinite(lo) & (fl > 0) & (lo > 0) if fl.size else np.zeros(0, dtype=bool)
    return fl[ok], lo[ok]


def _norm(values: np.ndarray):
    lo, hi = float(np.log10(values.min())), float(np.log10(values.max()))
    return matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)


def training_curves(runs_dir: Path, rows: list[dict]) -> Figure:
    """Training loss against FLOPs for every run (log-log), coloured by log10 N."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ns = np.array([_num(r.get("n_params")) for r in rows], dtype=float)
    cmap, norm = matplotlib.colormaps["viridis"], _norm(ns[np.isfinite(ns)] if np.isfinite(ns).any() else np.ones(1))
    for r, n in zip(rows, ns):
        fl, lo = _training_curve(Path(runs_dir) / r["run_id"])
        if fl.size == 0:
            continue
        style = "-" if r.get("status") == "completed" else ":"
        ax.plot(fl, lo, style, color=cmap(norm(np.log10(n))), lw=1.0, alpha=0.85)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax).set_label("log10 N (parameters)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs so far (6 N D)")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"training curves of {len(rows)} runs (dotted: not completed)")
    return fig


def loss_vs_n(rows: list[dict], loss_col: str = "val_loss") -> Figure:
    """Left: final loss against N, runs with the same token count D joined (one line per D; in
    an IsoFLOP design every D is its own point, coloured by D). Right: final loss against D,
    one line per model size N."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    done = [r for r in rows if r.get("status") == "completed" and math.isfinite(_num(r.get(loss_col)))]
    ds = np.array(sorted({_num(r["tokens"]) for r in done})) if done else np.ones(1)
    ns = np.array(sorted({_num(r["n_params"]) for r in done})) if done else np.ones(1)
    for (axis, key, other, values, cmap_name, name) in (
            (ax, "tokens", "n_params", ds, "plasma", "D"), (ax2, "n_params", "tokens", ns, "viridis", "N")):
        cmap, norm = matplotlib.colormaps[cmap_name], _norm(values)
        for v in values:
            sel = sorted((r for r in done if _num(r[key]) == v), key=lambda r: _num(r[other]))
            if not sel:
                continue
            col = cmap(0.9 * norm(np.log10(v)))
            axis.plot([_num(r[other]) for r in sel], [_num(r[loss_col]) for r in sel], "o-" if len(sel) > 1 else "o",
                      color=col, ms=4, lw=1, label=f"{name}={v:.3g}" if values.size <= 8 else None)
        if done and values.size <= 8:
            axis.legend(fontsize=8)
        elif done:
            sm = matplotlib.cm.ScalarMappable(
                norm=matplotlib.colors.Normalize(norm.vmin, norm.vmin + (norm.vmax - norm.vmin) / 0.9), cmap=cmap)
            fig.colorbar(sm, ax=axis).set_label(f"log10 {name}")
        axis.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"final {loss_col}")
    ax.set_title("final loss against N, per token count D")
    ax2.set_xlabel("training tokens D")
    ax2.set_title("final loss against D, per model size N")
    return fig


def isoflop_curves(rows: list[dict], loss_col: str = "val_loss") -> Figure:
    """Loss against N per IsoFLOP budget; the lowest run of each budget starred."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    done = [r for r in rows if r.get("status") == "completed" and math.isfinite(_num(r.get(loss_col)))
            and math.isfinite(_num(r.get("budget")))]
    budgets = np.array(sorted({_num(r["budget"]) for r in done})) if done else np.ones(1)
    cmap, norm = matplotlib.colormaps["viridis"], _norm(budgets)
    for c in budgets:
        sel = sorted((r for r in done if _num(r["budget"]) == c), key=lambda r: _num(r["n_params"]))
        if not sel:
            continue
        n = np.array([_num(r["n_params"]) for r in sel])
        lo = np.array([_num(r[loss_col]) for r in sel])
        col = cmap(0.9 * norm(np.log10(c)))
        ax.plot(n, lo, "o-", color=col, ms=4, lw=1, label=f"C={c:.2g}")
        i = int(np.argmin(lo))
        ax.scatter([n[i]], [lo[i]], marker="*", s=140, color=col, edgecolors="k", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"final {loss_col}")
    ax.set_title("IsoFLOP curves (star: lowest loss of each budget)")
    if done:
        ax.legend(fontsize=8)
    return fig


def write_sweep_plots(plots_dir, runs_dir, rows: list[dict], fit: FitResult | None, *, loss_col: str = "val_loss",
                      isoflop: bool = False, dpi: int = 110) -> list[Path]:
    """Write the sweep's plots into plots_dir (see the module docstring); returns the paths."""
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {"training_curves": training_curves(Path(runs_dir), rows), "loss_vs_n": loss_vs_n(rows, loss_col)}
    if isoflop and (fit is None or fit.isoflop is None):
        figs["isoflop"] = isoflop_curves(rows, loss_col)
    return save_figures(figs, out, dpi)


def plot_sweep(plan: Plan, out: Path, fit: FitOutput) -> list[Path]:
    """DIR/plots (per arm under plots/<arm>/): the fit's plots and the runs' training curves,
    loss against N and D, and IsoFLOP curves; returns the paths written."""
    out = Path(out)
    plots_dir = out / "plots"
    isoflop = plan.spec.design == "isoflop"
    fits = fit.groups if fit.groups is not None else ({} if fit.error is not None else fit.results)
    paths: list[Path] = []
    if fits:
        runs = load_sweep_runs(plan, out)
        parts = runs.groups() if plan.has_arms else {None: runs}
        for arm, r in fits.items():
            paths += make_all(plots_dir if arm is None else plots_dir / arm, parts[arm], r)
    rows = collect_rows(out, plan)
    for arm in sorted({r.get("arm") for r in rows}, key=str):
        sub = [r for r in rows if r.get("arm") == arm]
        paths += write_sweep_plots(plots_dir if arm is None else plots_dir / arm, out / "runs", sub, fits.get(arm),
                                   loss_col=plan.spec.fit_loss, isoflop=isoflop)
    return paths
