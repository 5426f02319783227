"""Plots of scaling-law fits (matplotlib, Agg; no pyplot, so nothing global changes).

Every function takes the runs (:class:`scaling.laws.runs.Runs` or anything with N, D, L, C
arrays) and their fits (:class:`scaling.laws.result.FitResult`), and returns a
:class:`matplotlib.figure.Figure`; :func:`make_all` writes the ones the fits allow as PNGs:

- ``isoflop.png``: loss against N per IsoFLOP budget, the approach-2 parabolas and
  their minima (and, dashed, the approach-3 law along each budget)
- ``frontier.png``: loss against compute with the approach-3 compute-optimal frontier
- ``optimal_n.png``: N_opt against compute: approach 3's frontier, approach 2's minima,
  approach 1's envelope
- ``pred_vs_obs.png``: approach-3 predicted against observed loss
- ``residuals.png``: log(predicted / observed) against C and against N
- ``envelope.png``: the training curves and their lower envelope (approach 1)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from scaling.laws.approach2 import isoflop_groups
from scaling.laws.law import compute_optimal, law_loss
from scaling.laws.result import FitResult


def _law(result: FitResult):
    return result.law.params


def _has_law(result: FitResult) -> bool:
    """An approach-3 fit whose parameters are all numbers (a degenerate fit may lack some)."""
    return result.law is not None and all(np.isfinite(result.law.params))


def _has_frontier(result: FitResult) -> bool:
    """An approach-3 fit with a compute-optimal frontier (none when an exponent is <= 0)."""
    return _has_law(result) and np.isfinite(result.law.a)


def _scatter_colored(ax, x, y, c, fig, label: str):
    sc = ax.scatter(x, y, c=np.log10(c), cmap="viridis", s=14, alpha=0.85, edgecolors="none")
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label(label)
    return sc


def isoflop(runs, result: FitResult) -> Figure:
    """IsoFLOP profiles: loss against N per budget, parabolas and their minima."""
    a2 = result.isoflop
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    labels, values = isoflop_groups(runs.C, runs.budget, a2.budget_tol)
    cmap = matplotlib.colormaps["viridis"]
    lo, hi = np.log10(values.min()), np.log10(values.max())
    minima = {round(np.log10(m.C), 6): m for m in a2.minima}
    for j, cb in enumerate(values):
        sel = labels == j
        col = cmap(0.0 if hi == lo else 0.9 * (np.log10(cb) - lo) / (hi - lo))
        ax.scatter(runs.N[sel], runs.L[sel], color=col, s=16, label=f"C={cb:.2g}" if values.size <= 10 else None)
        m = minima.get(round(np.log10(cb), 6))
        ln = np.linspace(np.log(runs.N[sel].min()), np.log(runs.N[sel].max()), 100)
        if m is not None:
            p2, p1, p0 = m.parabola
            ax.plot(np.exp(ln), p0 + p1 * ln + p2 * ln**2, color=col, lw=1.2)
            ax.scatter([m.N_opt], [m.L_min], color=col, marker="*", s=140, edgecolors="k", zorder=5)
        if _has_law(result):
            nn = np.exp(ln)
            ax.plot(nn, law_loss(nn, cb / (6 * nn), *_law(result)), color=col, lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    ax.set_title(f"IsoFLOP profiles (approach 2: N_opt ∝ C^{a2.a:.3f})")
    if values.size <= 10:
        ax.legend(fontsize=7, ncol=2)
    else:
        sm = matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(lo, lo + (hi - lo) / 0.9 if hi > lo else lo + 1), cmap=cmap
        )
        fig.colorbar(sm, ax=ax).set_label("log10 C (budget)")
    return fig


def frontier(runs, result: FitResult) -> Figure:
    """Loss against compute, coloured by N, with the approach-3 compute-optimal frontier."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    _scatter_colored(ax, runs.C, runs.L, runs.N, fig, "log10 N")
    if _has_frontier(result):
        cc = np.logspace(np.log10(runs.C.min()) - 0.3, np.log10(runs.C.max()) + 1.0, 200)
        _, _, l_opt = compute_optimal(cc, *_law(result))
        ax.plot(cc, l_opt, "r-", lw=1.5, label=f"approach 3 frontier (a={result.law.a:.3f})")
        ax.axhline(result.law.E, color="gray", ls=":", lw=1, label=f"E = {result.law.E:.3g}")
    a2 = result.isoflop
    if a2 is not None:
        ax.scatter([m.C for m in a2.minima], [m.L_min for m in a2.minima], marker="*", s=120,
                   color="orange", edgecolors="k", zorder=5, label="approach 2 minima")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("loss")
    ax.set_title("loss against compute")
    if ax.get_legend_handles_labels()[0]:  # a degenerate fit draws no frontier
        ax.legend(fontsize=8)
    return fig


def optimal_n(runs, result: FitResult) -> Figure:
    """Compute-optimal N against C from each approach available."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    cc = np.logspace(np.log10(runs.C.min()) - 0.3, np.log10(runs.C.max()) + 1.0, 200)
    if _has_frontier(result):
        n_opt, _, _ = compute_optimal(cc, *_law(result))
        ax.plot(cc, n_opt, "r-", label=f"approach 3: a = {result.law.a:.3f}")
    a2 = result.isoflop
    if a2 is not None:
        cs = np.array([m.C for m in a2.minima])
        ax.scatter(cs, [m.N_opt for m in a2.minima], marker="*", s=120, color="orange", edgecolors="k",
                   zorder=5, label=f"approach 2: a = {a2.a:.3f}")
        ax.plot(cc, a2.k_n * cc**a2.a, color="orange", ls="--", lw=1)
    a1 = result.envelope
    if a1 is not None:
        ax.scatter([p.C for p in a1.points], [p.N_opt for p in a1.points], s=8, color="tab:blue",
                   label=f"approach 1: a = {a1.a:.3f}")
        ax.plot(cc, a1.k_n * cc**a1.a, color="tab:blue", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("compute-optimal N")
    ax.set_title("compute-optimal model size")
    if ax.get_legend_handles_labels()[0]:  # a degenerate fit draws no frontier
        ax.legend(fontsize=8)
    return fig


def pred_vs_obs(runs, result: FitResult) -> Figure:
    """Approach-3 predicted loss against observed loss, with y = x."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    pred = law_loss(runs.N, runs.D, *_law(result))
    _scatter_colored(ax, runs.L, pred, runs.C, fig, "log10 C")
    lo, hi = min(runs.L.min(), pred.min()), max(runs.L.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("observed loss")
    ax.set_ylabel("predicted loss")
    ax.set_title("approach 3: predicted against observed")
    return fig


def residuals(runs, result: FitResult) -> Figure:
    """log(predicted / observed) against C and against N."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    r = np.log(law_loss(runs.N, runs.D, *_law(result))) - np.log(runs.L)
    for ax, x, name in ((ax1, runs.C, "training FLOPs C"), (ax2, runs.N, "parameters N")):
        ax.scatter(x, r, s=12, alpha=0.8)
        ax.axhline(0, color="k", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(name)
    ax1.set_ylabel("log(predicted / observed)")
    fig.suptitle("approach 3 residuals")
    return fig


def envelope(curves, result: FitResult) -> Figure:
    """Training curves (loss against FLOPs) and their lower envelope (approach 1)."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    a1 = result.envelope
    for n, fl, lo in curves:
        ax.plot(fl, lo, lw=0.8, alpha=0.7, label=f"N={n:.3g}")
    ax.plot([p.C for p in a1.points], [p.L_min for p in a1.points], "k-", lw=2, label="envelope")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs")
    ax.set_ylabel("loss")
    ax.set_title(f"approach 1: envelope, N_opt ∝ C^{a1.a:.3f}")
    ax.legend(fontsize=7, ncol=2)
    return fig


def make_all(out_dir, runs, result: FitResult, *, curves=None, dpi: int = 110) -> list[Path]:
    """Write every plot the fits allow into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Figure] = {}
    if result.isoflop is not None:
        figs["isoflop"] = isoflop(runs, result)
    if _has_law(result):
        figs["frontier"] = frontier(runs, result)
        figs["pred_vs_obs"] = pred_vs_obs(runs, result)
        figs["residuals"] = residuals(runs, result)
    if _has_law(result) or result.isoflop is not None:
        figs["optimal_n"] = optimal_n(runs, result)
    if curves is not None and result.envelope is not None:
        figs["envelope"] = envelope(curves, result)
    return save_figures(figs, out, dpi)


def save_figures(figs: dict, out: Path, dpi: int) -> list[Path]:
    """Write each figure as ``out/<name>.png``; returns the paths."""
    paths = []
    for name, fig in figs.items():
        p = out / f"{name}.png"
        fig.savefig(p, dpi=dpi)
        paths.append(p)
    return paths
