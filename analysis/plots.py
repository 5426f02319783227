"""Plots of scaling-law fits (matplotlib, Agg; no pyplot, so nothing global changes).

Every function takes the runs (:class:`scaling.laws.runs.Runs` or anything with N, D, L, C
arrays) and their fits (:class:`scaling.laws.result.FitResult`), and returns a
:class:`matplotlib.figure.Figure`; ``ylabel`` names the loss with its unit (for example
"final validation loss (nats/byte)").  Intervals are the fits' bootstrap percentile
intervals at their level (approach 3: :class:`scaling.laws.bootstrap.Bootstrap`'s parameter
samples pushed through the law; approach 2: :class:`scaling.laws.approach2.Approach2Bootstrap`'s
per-budget vertices); without a bootstrap the curves are drawn without bands.
The predicted-against-observed and residual figures are :mod:`analysis.residual_plots`'s,
the laws, bootstrap samples and interval labels they draw :mod:`analysis.fit_intervals`'s.
:func:`make_all` writes the ones the fits allow as PNGs:

- ``isoflop.png``: loss against N per IsoFLOP budget: the runs, approach 2's parabolas and
  vertices, approach 3's law along each budget with its band and its optimum
- ``optimal_n.png``: the compute-optimal frontier N_opt(C) and D_opt(C) of each approach,
  with bands, the compute range of the runs shaded (outside it is extrapolation)
- ``frontier.png``: loss against compute with the approach-3 compute-optimal loss
- ``pred_vs_obs.png``: approach-3 predicted against observed loss
- ``residuals.png``: observed / predicted - 1 (%) against C per model size, the held-out
  runs (predicted by the fit without them) marked apart, and a +-1% band
- ``envelope.png``: the training curves and their lower envelope (approach 1)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.fit_intervals import (
    a2_label,
    a2_vertex_ci,
    a3_label,
    boot_params,
    has_frontier,
    has_law,
    law_params,
)
from analysis.plot_style import RANGE_COLOR, log_colors, percentile_band, sci
from analysis.residual_plots import pred_vs_obs, residuals
from scaling.laws.approach2 import isoflop_groups
from scaling.laws.law import compute_optimal, law_loss
from scaling.laws.result import FitResult


def isoflop(runs, result: FitResult, *, ylabel: str = "loss") -> Figure:
    """IsoFLOP profiles: the runs of each budget, approach 2's parabola in log N and its
    vertex (with its bootstrap interval), approach 3's law L(N, C/6N) (with its band) and
    its optimum."""
    a2 = result.isoflop
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    labels, values = isoflop_groups(runs.C, runs.budget, a2.budget_tol if a2 is not None else 0.1)
    colors = log_colors(values)
    minima = {round(math.log10(m.C), 6): m for m in a2.minima} if a2 is not None else {}
    vci = a2_vertex_ci(result)
    law = has_law(result)
    boot = boot_params(result) if law else None
    shown = []
    for j, cb in enumerate(values):
        sel = labels == j
        if not sel.any():
            continue
        col, key = colors[j], round(math.log10(cb), 6)
        n = runs.N[sel]
        x0, x1 = np.log(n.min()), np.log(n.max())
        pad = 0.15 * max(x1 - x0, 0.5)
        nn = np.exp(np.linspace(x0 - pad, x1 + pad, 120))
        ax.scatter(n, runs.L[sel], color=col, s=26, zorder=4, edgecolors="white", linewidths=0.6)
        m = minima.get(key)
        if m is None and not law:  # no curve for this budget: join its runs so the profile shows
            order = np.argsort(n)
            ax.plot(n[order], runs.L[sel][order], color=col, lw=0.8, alpha=0.6)
        if m is not None:
            p2, p1, p0 = m.parabola
            ax.plot(nn, np.polyval((p2, p1, p0), np.log(nn)), color=col, lw=1.4)
            lo, hi = vci.get(key, (math.nan, math.nan))
            xerr = [[m.N_opt - lo], [hi - m.N_opt]] if np.isfinite(lo) and np.isfinite(hi) else None
            ax.errorbar(
                [m.N_opt],
                [m.L_min],
                xerr=xerr,
                fmt="*",
                ms=13,
                color=col,
                mec="k",
                ecolor=col,
                elinewidth=1.5,
                capsize=3,
                zorder=6,
            )
            shown.append(m.L_min)
        if law:
            if has_frontier(result):  # the law's curve reaches its optimum (up to a decade beyond the runs)
                n_opt = float(compute_optimal(cb, *law_params(result))[0])
                lo_x, hi_x = np.log(nn[0]), np.log(nn[-1])
                lo_x = max(min(lo_x, np.log(n_opt) - pad), x0 - np.log(10))
                hi_x = min(max(hi_x, np.log(n_opt) + pad), x1 + np.log(10))
                nn = np.exp(np.linspace(lo_x, hi_x, 160))
            ax.plot(nn, law_loss(nn, cb / (6 * nn), *law_params(result)), color=col, lw=1.1, ls="--")
            if boot is not None:
                s, level = boot
                vals = law_loss(nn[None, :], cb / (6 * nn[None, :]), *(s.T[:, :, None]))
                ax.fill_between(nn, *percentile_band(vals, level), color=col, alpha=0.15, lw=0)
            if has_frontier(result) and nn[0] <= n_opt <= nn[-1]:
                l_opt = compute_optimal(cb, *law_params(result))[2]
                ax.scatter(
                    [n_opt], [l_opt], marker="D", s=30, facecolors="white", edgecolors=col, linewidths=1.6, zorder=7
                )
                shown.append(float(l_opt))
    lmin, lmax = float(min([runs.L.min(), *shown])), float(runs.L.max())
    span = max(lmax - lmin, 1e-3 * lmax)
    ax.set_ylim(lmin - 0.12 * span, lmax + 0.12 * span)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(ylabel)
    level = boot[1] if boot is not None else 0.95
    marks = [Line2D([], [], ls="none", marker="o", color="0.35", mec="white", label="run (final loss)")]
    if not law and len(minima) < values.size:
        marks.append(Line2D([], [], color="0.35", lw=0.8, alpha=0.6, label="runs of a budget without a fitted curve"))
    if a2 is not None:
        marks += [
            Line2D([], [], color="0.35", lw=1.4, label="approach 2: parabola in log N"),
            Line2D(
                [],
                [],
                ls="none",
                marker="*",
                ms=11,
                color="0.35",
                mec="k",
                label="approach 2: vertex" + (f" ({level:.0%} interval)" if vci else ""),
            ),
        ]
    if law:
        marks.append(Line2D([], [], color="0.35", lw=1.1, ls="--", label="approach 3: L(N, C/6N)"))
        if boot is not None:
            marks.append(Patch(color="0.35", alpha=0.25, lw=0, label=f"approach 3: {level:.0%} bootstrap band"))
        if has_frontier(result):
            marks.append(
                Line2D([], [], ls="none", marker="D", mfc="white", mec="0.35", mew=1.6, label="approach 3: optimum")
            )
    fig.legend(handles=marks, fontsize=8, loc="outside right upper", title="marks", title_fontsize=8)
    if values.size <= 12:
        fig.legend(
            handles=[Patch(color=c, label=f"C = {sci(v)} FLOPs") for c, v in zip(colors, values)],
            fontsize=8,
            loc="outside right lower",
            title="budget (6ND)",
            title_fontsize=8,
        )
    subtitle = "; ".join(
        t for t in (a2_label(result) if a2 is not None else "", a3_label(result) if has_frontier(result) else "") if t
    )
    ax.set_title(
        "IsoFLOP profiles: loss against model size at fixed compute"
        + (f"\n{subtitle} (N_opt ∝ C^a)" if subtitle else ""),
        fontsize=10,
    )
    return fig


def frontier(runs, result: FitResult, *, ylabel: str = "loss") -> Figure:
    """Loss against compute, coloured by N, with the approach-3 compute-optimal loss and its band."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.axvspan(runs.C.min(), runs.C.max(), color=RANGE_COLOR, zorder=0, label="compute range of the runs")
    sc = ax.scatter(runs.C, runs.L, c=np.log10(runs.N), cmap="viridis", s=16, zorder=3, label="run")
    fig.colorbar(sc, ax=ax).set_label("log10 N (parameters)")
    if has_frontier(result):
        cc = np.logspace(np.log10(runs.C.min()) - 0.5, np.log10(runs.C.max()) + 1.0, 200)
        ax.plot(cc, compute_optimal(cc, *law_params(result))[2], "r-", lw=1.5, label="approach 3: compute-optimal loss")
        boot = boot_params(result)
        if boot is not None:
            vals = compute_optimal(cc[None, :], *(boot[0].T[:, :, None]))[2]
            ax.fill_between(
                cc, *percentile_band(vals, boot[1]), color="r", alpha=0.15, lw=0, label=f"{boot[1]:.0%} bootstrap band"
            )
        ax.axhline(result.law.E, color="gray", ls=":", lw=1, label=f"irreducible loss E = {result.law.E:.3g}")
    if result.isoflop is not None:
        ax.scatter(
            [m.C for m in result.isoflop.minima],
            [m.L_min for m in result.isoflop.minima],
            marker="*",
            s=130,
            color="orange",
            edgecolors="k",
            zorder=5,
            label="approach 2: vertex of each budget",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel(ylabel)
    ax.set_title("loss against compute and the compute-optimal loss", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _frontier_panel(ax, cc, runs, result: FitResult, k: int) -> None:
    """One panel of :func:`optimal_n`: k = 0 for N_opt, 1 for D_opt."""
    exponent = "ab"[k]
    ax.axvspan(runs.C.min(), runs.C.max(), color=RANGE_COLOR, zorder=0, label="compute range of the runs")
    if has_frontier(result):
        ax.plot(cc, compute_optimal(cc, *law_params(result))[k], "r-", lw=1.6, label=a3_label(result, exponent))
        boot = boot_params(result)
        if boot is not None:
            vals = compute_optimal(cc[None, :], *(boot[0].T[:, :, None]))[k]
            ax.fill_between(
                cc,
                *percentile_band(vals, boot[1]),
                color="r",
                alpha=0.15,
                lw=0,
                label=f"approach 3: {boot[1]:.0%} bootstrap band",
            )
    a2 = result.isoflop
    if a2 is not None:
        vci = a2_vertex_ci(result)
        cs = np.array([m.C for m in a2.minima])
        y = np.array([m.N_opt if k == 0 else m.D_opt for m in a2.minima])
        lohi = np.array([vci.get(round(math.log10(c), 6), (math.nan, math.nan)) for c in cs])
        if k == 1:  # D = C / 6N: the interval of D_opt is that of N_opt inverted
            lohi = cs[:, None] / (6 * lohi[:, ::-1])
        ok = np.all(np.isfinite(lohi), axis=1)
        yerr = np.where(ok, np.abs(np.stack([y - lohi[:, 0], lohi[:, 1] - y])), 0.0)
        ax.errorbar(
            cs,
            y,
            yerr=yerr if ok.any() else None,
            fmt="*",
            ms=12,
            color="orange",
            mec="k",
            ecolor="darkorange",
            capsize=3,
            zorder=5,
            label="approach 2: vertex per budget" + (" (bootstrap interval)" if ok.any() else ""),
        )
        ax.plot(
            cc,
            (a2.k_n if k == 0 else a2.k_d) * cc ** (a2.a if k == 0 else a2.b),
            color="darkorange",
            ls="--",
            lw=1.1,
            label=a2_label(result, exponent),
        )
    a1 = result.envelope
    if a1 is not None:
        pts = [p for p in a1.points if p.C > 0 and p.N_opt > 0]
        ax.scatter(
            [p.C for p in pts],
            [p.N_opt if k == 0 else p.C / (6 * p.N_opt) for p in pts],
            s=9,
            color="tab:blue",
            zorder=4,
            label="approach 1: envelope points",
        )
        ax.plot(
            cc,
            (a1.k_n if k == 0 else a1.k_d) * cc ** (a1.a if k == 0 else a1.b),
            color="tab:blue",
            ls=":",
            lw=1.3,
            label=f"approach 1: {exponent} = {getattr(a1, exponent):.3f}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("compute-optimal parameters N_opt" if k == 0 else "compute-optimal tokens D_opt")
    ax.legend(fontsize=7.5, loc="upper left")


def optimal_n(runs, result: FitResult) -> Figure:
    """The compute-optimal frontier N_opt(C) and D_opt(C) of each approach available, with
    bands, over the runs' compute range (shaded) and beyond it."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    cc = np.logspace(np.log10(runs.C.min()) - 0.5, np.log10(runs.C.max()) + 1.0, 200)
    for k, ax in enumerate(fig.subplots(1, 2)):
        _frontier_panel(ax, cc, runs, result, k)
    fig.suptitle("compute-optimal frontier: N_opt ∝ C^a, D_opt ∝ C^b (unshaded: extrapolation)", fontsize=11)
    return fig


def envelope(curves, result: FitResult, *, ylabel: str = "loss") -> Figure:
    """Training curves (loss against FLOPs) and their lower envelope (approach 1)."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    a1 = result.envelope
    curves = list(curves)
    colors = log_colors([n for n, *_ in curves]) if curves else []
    for (n, fl, lo), col in zip(curves, colors):
        ax.plot(fl, lo, lw=0.8, alpha=0.75, color=col, label=f"N = {sci(n)}" if len(curves) <= 10 else None)
    ax.plot([p.C for p in a1.points], [p.L_min for p in a1.points], "k-", lw=2, label="lower envelope")
    ax.set_xscale("log")
    ax.set_xlabel("training compute so far, 6ND (FLOPs)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"approach 1: lower envelope of the training curves, N_opt ∝ C^{a1.a:.3f}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def fit_figures(runs, result: FitResult, *, curves=None, ylabel: str = "loss") -> tuple[dict, dict]:
    """The figures the fits allow, by name, and why each other one was not drawn."""
    figs: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    if result.isoflop is not None or runs.budget is not None:
        figs["isoflop"] = isoflop(runs, result, ylabel=ylabel)
    else:
        skipped["isoflop"] = "not an IsoFLOP design (no budgets) and no approach-2 fit"
    if has_law(result):
        figs["frontier"] = frontier(runs, result, ylabel=ylabel)
        figs["pred_vs_obs"] = pred_vs_obs(runs, result, ylabel=ylabel)
        figs["residuals"] = residuals(runs, result)
    else:
        for name in ("frontier", "pred_vs_obs", "residuals"):
            skipped[name] = "no approach-3 law with finite parameters"
    if has_frontier(result) or result.isoflop is not None or result.envelope is not None:
        figs["optimal_n"] = optimal_n(runs, result)
    else:
        skipped["optimal_n"] = "no approach gave a compute-optimal frontier"
    if curves is not None and result.envelope is not None:
        figs["envelope"] = envelope(curves, result, ylabel=ylabel)
    return figs, skipped


def make_all(out_dir, runs, result: FitResult, *, curves=None, ylabel: str = "loss", dpi: int = 130) -> list[Path]:
    """Write every plot the fits allow into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save_figures(fit_figures(runs, result, curves=curves, ylabel=ylabel)[0], out, dpi)


def save_figures(figs: dict, out: Path, dpi: int) -> list[Path]:
    """Write each figure as ``out/<name>.png``; returns the paths."""
    paths = []
    for name, fig in figs.items():
        p = Path(out) / f"{name}.png"
        fig.savefig(p, dpi=dpi)
        paths.append(p)
    return paths
