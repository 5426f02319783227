"""How well approach 3's law fits its runs (matplotlib, Agg; drawn by :mod:`analysis.plots`):
predicted against observed loss, and the residuals against compute with the held-out runs
as predicted by the fit without them.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from analysis.fit_intervals import law_params
from analysis.plot_style import DODGE, MARKERS, RANGE_COLOR, log_colors, sci
from scaling.laws.approach2 import isoflop_groups
from scaling.laws.law import law_loss
from scaling.laws.result import FitResult

__all__ = ["pred_vs_obs", "held_out", "residuals"]


def pred_vs_obs(runs, result: FitResult, *, ylabel: str = "loss") -> Figure:
    """Approach-3 predicted loss against observed loss, with y = x."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    pred = law_loss(runs.N, runs.D, *law_params(result))
    sc = ax.scatter(runs.L, pred, c=np.log10(runs.C), cmap="viridis", s=16, label="run")
    fig.colorbar(sc, ax=ax).set_label("log10 C (FLOPs)")
    lo, hi = min(runs.L.min(), pred.min()), max(runs.L.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = observed")
    ax.set_xlabel(f"observed {ylabel}")
    ax.set_ylabel(f"predicted {ylabel}")
    ax.set_title("approach 3: predicted against observed loss", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def held_out(runs, result: FitResult) -> tuple[list[tuple[float, float, float, float]], str]:
    """The held-out runs as (N, C, observed, predicted by the fit without them), and what they
    are: the fit's hold-out check (``holdout``), else the extrapolation diagnostic's largest
    budget (its details name the budget and the law fitted without it); ([], "") when neither."""
    h = getattr(result, "holdout", None)
    rows = [
        (r.N, r.C, r.observed, r.predicted)
        for r in getattr(h, "runs", None) or ()
        if all(hasattr(r, k) for k in ("N", "C", "observed", "predicted"))
    ]
    if rows:
        return rows, f"held out: the {len(rows)} largest-C runs"
    for check in getattr(getattr(result, "diagnostics", None), "checks", None) or ():
        det = getattr(check, "details", None) or {}
        if getattr(check, "name", "") != "extrapolation.mean_error" or not {"budget", "fit"} <= set(det):
            continue
        labels, values = isoflop_groups(runs.C, runs.budget, getattr(result.isoflop, "budget_tol", 0.1))
        if not values.size or not math.isclose(float(values[-1]), float(det["budget"]), rel_tol=1e-6):
            continue
        sel = labels == values.size - 1
        fit = det["fit"]
        pred = law_loss(runs.N[sel], runs.D[sel], *(float(fit[k]) for k in ("E", "A", "B", "alpha", "beta")))
        rows = list(zip(runs.N[sel], runs.C[sel], runs.L[sel], pred))
        return rows, "held out: the largest budget"
    return [], ""


def residuals(runs, result: FitResult) -> Figure:
    """observed / predicted - 1 (%) of approach 3 against C, a marker per model size; the
    held-out runs as predicted by the fit without them (open, red-edged markers); +-1% band."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    r = 100.0 * (runs.L / law_loss(runs.N, runs.D, *law_params(result)) - 1.0)
    ax.axhspan(-1, 1, color=RANGE_COLOR, zorder=0, label="±1%")
    ax.axhline(0, color="k", lw=0.8)
    sizes = np.unique(runs.N)
    colors = log_colors(sizes, "plasma")
    marker_of = {}
    dodge = {}  # runs of one budget share a C: each size is drawn a little to the right of the last
    for i, n in enumerate(sizes):
        sel = runs.N == n
        marker_of[n] = MARKERS[i % len(MARKERS)]
        dodge[n] = 10 ** (DODGE * (i - (sizes.size - 1) / 2))
        ax.scatter(
            runs.C[sel] * dodge[n],
            r[sel],
            marker=marker_of[n],
            color=colors[i],
            s=34,
            zorder=3,
            label=f"N = {sci(n)}" if sizes.size <= 12 else None,
        )
    held, what = held_out(runs, result)
    if held:
        hr = np.array([100.0 * (obs / pred - 1.0) for _, _, obs, pred in held])
        for (n, c, _, _), v in zip(held, hr):
            ax.scatter(
                [c * dodge.get(n, 1.0)],
                [v],
                marker=marker_of.get(n, "o"),
                s=90,
                facecolors="none",
                edgecolors="red",
                linewidths=1.5,
                zorder=4,
            )
        ax.scatter(
            [],
            [],
            marker="o",
            s=90,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            label=f"{what}, predicted by the fit without them\n(mean |err| {np.mean(np.abs(hr)):.2f}%, "
            f"worst {np.max(np.abs(hr)):.2f}%)",
        )
    rms = float(np.sqrt(np.mean(r**2)))
    lim = max(1.5, 1.15 * float(np.max(np.abs(np.concatenate([r, hr if held else []])))))
    ax.set_ylim(-lim, lim)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs; sizes offset slightly for legibility)")
    ax.set_ylabel("observed / predicted − 1 (%)")
    ax.set_title(f"approach 3 residuals (filled: in the fit, RMS {rms:.2f}%)", fontsize=10)
    ax.legend(fontsize=7.5, ncol=2 if sizes.size > 6 else 1, loc="best")
    return fig
