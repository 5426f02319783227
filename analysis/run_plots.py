"""Plots of a sweep's runs themselves (matplotlib, Agg figures; no pyplot state):

- :func:`training_curves`: training loss against tokens for every run, a colour per model
  size; a warmup-stable-decay cooldown branch (a results.csv row with a ``parent`` and its
  ``stable_steps``) is drawn from the point where it forks off its parent's curve, and each
  run's final validation loss is a marker at its token count
- :func:`lr_scan`: the learning-rate pilot scan (``lr_scan/results.csv`` and
  ``lr_rule.json``): validation loss against the learning rate per scanned size with a
  parabola in log lr, the part of it within 1% of its minimum (the flat part), and the
  learning rate the fitted rule lr = c (N / n_ref)^-gamma gives each size; beside it the
  scanned optima against N with the rule and the rates the sweep applied
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter

from analysis.plot_style import log_colors, sci

SMOOTH = 0.04
"""The training curves' moving-average window, as a fraction of the longest curve's logged points."""
FLAT = 0.01
"""The flat part of a loss-against-lr curve: within this fraction of the parabola's minimum."""


def num(v) -> float:
    """A CSV or JSON value as a float (NaN when missing or not a number)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """step, tokens and training loss of the lines of a metrics.jsonl with a finite loss (a torn
    or foreign line is skipped), sorted by step; empty arrays when the file is missing."""
    step, tok, loss = [], [], []
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        s, t, lo = num(rec.get("step")), num(rec.get("tokens")), num(rec.get("loss"))
        if math.isfinite(s) and math.isfinite(t) and t > 0 and math.isfinite(lo) and lo > 0:
            step.append(s)
            tok.append(t)
            loss.append(lo)
    order = np.argsort(step, kind="stable")
    return {k: np.asarray(v, dtype=np.float64)[order] for k, v in (("step", step), ("tokens", tok), ("loss", loss))}


def smooth(y: np.ndarray, h: int) -> np.ndarray:
    """A centred moving average over 2h + 1 points (no lag; the window shrinks at the ends):
    light smoothing that keeps a cooldown's drop where it happens."""
    if h < 1:
        return y
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(len(y))
    lo, hi = np.maximum(i - h, 0), np.minimum(i + h + 1, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def half_window(lengths) -> int:
    """The training curves' moving-average half-width: SMOOTH of the longest curve's points."""
    return max(1, round(SMOOTH * max(lengths, default=0) / 2))


def training_curves(rows: list[dict], runs_dir: Path, *, unit: str, val_col: str = "val_loss") -> Figure | None:
    """Training curves with their cooldown branches (see the module docstring); None when no
    run has a training curve."""
    runs_dir = Path(runs_dir)
    by_id = {r["run_id"]: r for r in rows if r.get("run_id")}
    for r in list(by_id.values()):  # a parent that is no row of its own (a stable phase without a cooldown)
        if r.get("parent") and r["parent"] not in by_id:
            by_id[r["parent"]] = {
                "run_id": r["parent"],
                "n_params": r.get("n_params"),
                "status": "completed",
                **{k: r.get(k) for k in ("n_layer", "d_model", "n_head")},
            }
    order = sorted(by_id, key=lambda rid: bool(by_id[rid].get("parent")))  # parents first, branches on top
    curves = {rid: c for rid in order if (c := read_metrics(runs_dir / rid / "metrics.jsonl"))["step"].size}
    if not curves:
        return None
    sizes = sorted(n for n in {num(by_id[rid].get("n_params")) for rid in curves} if math.isfinite(n))
    color_of = dict(zip(sizes, log_colors(sizes)))
    shape_of = {num(r.get("n_params")): _shape(r) for r in by_id.values()}
    h = half_window(c["step"].size for c in curves.values())
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.add_subplot()
    n_branches, ymax, xmin = 0, [], []
    for rid, c in curves.items():
        row = by_id[rid]
        col = color_of.get(num(row.get("n_params")), "0.5")
        parent = row.get("parent") or ""
        fork = num(row.get("stable_steps"))
        x, y = c["tokens"], smooth(c["loss"], h)
        done = row.get("status", "completed") == "completed"
        if parent in curves and math.isfinite(fork):  # a branch: from its parent's curve at the fork
            pc = curves[parent]
            keep = c["step"] > fork
            x, y = x[keep], y[keep]
            if pc["step"].size and pc["step"][0] <= fork:
                ps = smooth(pc["loss"], h)
                x0 = float(np.interp(fork, pc["step"], pc["tokens"]))
                y0 = float(np.interp(fork, pc["step"], ps))
                x, y = np.concatenate([[x0], x]), np.concatenate([[y0], y])
                ax.plot([x0], [y0], marker="o", ms=3, color=col, zorder=4)
            ax.plot(x, y, color=col, lw=1.0, ls="-" if done else ":", alpha=0.95)
            n_branches += 1
        else:
            ax.plot(
                x,
                y,
                color=col,
                lw=1.8 if rid in {r.get("parent") for r in by_id.values()} else 1.3,
                ls="-" if done else ":",
                alpha=0.9,
            )
            xmin.append(0.05 * float(x[-1]))
        v, t = num(row.get(val_col)), num(row.get("tokens"))
        if done and math.isfinite(v) and v > 0 and math.isfinite(t) and t > 0:
            ax.scatter([t], [v], marker="X", s=45, color=col, edgecolors="k", linewidths=0.6, zorder=5)
    left = min(xmin) if xmin else None
    for c in curves.values():  # the y range of what is drawn right of the cut (the first steps are off the top)
        sel = c["tokens"] >= (left or 0)
        if sel.any():
            ymax.append(float(smooth(c["loss"], h)[sel].max()))
    if left is not None:
        ax.set_xlim(left=left)
    if ymax:
        ax.set_ylim(top=1.03 * max(ymax))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel(f"training loss ({unit})")
    handles = [
        Line2D(
            [], [], color=color_of[n], lw=2, label=f"N = {sci(n)}" + (f" ({shape_of[n]})" if shape_of.get(n) else "")
        )
        for n in sizes
    ]
    handles += [
        Line2D(
            [], [], color="0.3", lw=1.8, label="run from scratch" + (" (stable phase: parent)" if n_branches else "")
        ),
        Line2D([], [], ls="none", marker="X", color="0.3", mec="k", label=f"final {_loss_name(val_col)} of each run"),
    ]
    if n_branches:
        handles.insert(
            len(sizes) + 1,
            Line2D(
                [],
                [],
                color="0.3",
                lw=1.0,
                marker="o",
                ms=3,
                markevery=[0],
                label="cooldown branch (dot: where it forks)",
            ),
        )
    if any(r.get("status", "completed") != "completed" for r in by_id.values()):
        handles.append(Line2D([], [], color="0.3", ls=":", label="not completed"))
    ax.legend(handles=handles, fontsize=8, loc="lower left")
    what = (
        f"{len(curves) - n_branches} runs and {n_branches} cooldown branches" if n_branches else f"{len(curves)} runs"
    )
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_title(f"training curves of {what} (moving average over {2 * h + 1} logged steps)", fontsize=10)
    return fig


def _loss_name(col: str) -> str:
    return {"val_loss": "validation loss", "final_train_loss": "training loss"}.get(col, col.replace("_", " "))


def _shape(row: dict) -> str:
    vals = [row.get(k) for k in ("n_layer", "d_model", "n_head")]
    return f"L{vals[0]}-d{vals[1]}-h{vals[2]}" if all(v not in (None, "") for v in vals) else ""


def _scan_points(rows: list[dict], optimum: dict, val_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(lr, loss) of one scanned size (loss NaN: the run diverged): its completed rows of
    lr_scan/results.csv (by shape, else by n_params), else the lrs and losses lr_rule.json
    lists for it."""
    shape, n = optimum.get("shape"), num(optimum.get("n_params"))
    mine = [r for r in rows if (shape and _shape(r) == shape) or (not shape and num(r.get("n_params")) == n)]
    pts = [(num(r.get("lr")), num(r.get(val_col))) for r in mine if r.get("status", "completed") == "completed"]
    pts = [(a, b) for a, b in pts if math.isfinite(a) and a > 0]
    if not any(math.isfinite(b) for _, b in pts):
        pts = [(num(a), num(b)) for a, b in zip(optimum.get("lrs") or (), optimum.get("losses") or ())]
        pts = [(a, b) for a, b in pts if math.isfinite(a) and a > 0]
    arr = np.array(pts, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], np.where(np.isfinite(arr[:, 1]), arr[:, 1], np.nan)


def _mean_per_lr(lr: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log lr, mean loss) per distinct lr, ascending (seeds of one lr averaged)."""
    ux, inv = np.unique(np.log(lr), return_inverse=True)
    return ux, np.bincount(inv, weights=loss) / np.bincount(inv)


def _local_parabola(ux: np.ndarray, uy: np.ndarray):
    """((p2, p1, p0), (x lo, x hi)): the parabola in log lr through the best lr and its two
    neighbours (as the scan's own optimum is found); None when the best is at an end of the
    scan or the three points do not curve upwards."""
    i = int(np.argmin(uy))
    if not 0 < i < ux.size - 1:
        return None
    p = np.polyfit(ux[i - 1 : i + 2], uy[i - 1 : i + 2], 2)
    return (tuple(p), (float(ux[i - 1]), float(ux[i + 1]))) if p[0] > 0 else None


def rule_lr(rule: dict, n: float) -> float:
    """The learning rate lr_rule.json's c (N / n_ref)^-gamma gives N."""
    return num(rule.get("c")) * (n / num(rule.get("n_ref", 1.0))) ** -num(rule.get("gamma"))


def lr_scan(rows: list[dict], rule: dict, *, unit: str, val_col: str = "val_loss") -> Figure | None:
    """The learning-rate scan and its rule (see the module docstring); None when lr_rule.json
    lists no scanned size with points."""
    optima = [o for o in rule.get("optima") or () if isinstance(o, dict) and num(o.get("n_params")) > 0]
    data = [(o, *_scan_points(rows, o, val_col)) for o in optima]
    data = [d for d in data if np.isfinite(d[2]).any()]
    if not data:
        return None
    data.sort(key=lambda d: num(d[0]["n_params"]))
    colors = log_colors([num(o["n_params"]) for o, *_ in data], "plasma")
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    penalties = []
    diverged = False
    for (o, lr, loss), col in zip(data, colors):
        n = num(o["n_params"])
        bad = ~np.isfinite(loss)
        if bad.any():  # at the top edge of the axes
            ax.scatter(
                lr[bad],
                np.full(bad.sum(), 0.97),
                marker="x",
                s=40,
                color=col,
                zorder=5,
                transform=ax.get_xaxis_transform(),
            )
            diverged = True
        lr, loss = lr[~bad], loss[~bad]
        ax.scatter(
            lr, loss, color=col, s=24, zorder=4, label=f"N = {sci(n)}" + (f" ({o['shape']})" if o.get("shape") else "")
        )
        ux, uy = _mean_per_lr(lr, loss)
        ax.plot(np.exp(ux), uy, color=col, lw=0.7, alpha=0.6)
        chosen = rule_lr(rule, n)
        yc = float(np.interp(math.log(chosen), ux, uy)) if math.isfinite(chosen) and chosen > 0 else math.nan
        best = float(uy.min())
        par = _local_parabola(ux, uy)
        if par is not None:
            (p2, p1, p0), (xa, xb) = par
            xx = np.linspace(xa - 0.15 * (xb - xa), xb + 0.15 * (xb - xa), 100)
            yy = np.polyval((p2, p1, p0), xx)
            ax.plot(np.exp(xx), yy, color=col, lw=1.4)
            best = p0 - p1 * p1 / (4 * p2)
            flat = yy <= best * (1 + FLAT)
            ax.plot(np.exp(xx[flat]), yy[flat], color=col, lw=6, alpha=0.3, solid_capstyle="butt")
            if math.isfinite(yc) and xa <= math.log(chosen) <= xb:
                yc = float(np.polyval((p2, p1, p0), math.log(chosen)))
        if math.isfinite(yc):
            ax.scatter([chosen], [yc], marker="v", s=80, color=col, edgecolors="k", zorder=6)
            penalties.append(100 * (yc / best - 1))
        lr_opt = num(o.get("lr_opt"))
        if math.isfinite(lr_opt) and lr_opt > 0:
            ax2.scatter(
                [n],
                [lr_opt],
                marker="*",
                s=130,
                color=col,
                edgecolors="k",
                zorder=5,
                facecolors=col if o.get("in_range", True) else "none",
            )
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"final {_loss_name(val_col)} ({unit})")
    marks = [
        Line2D([], [], ls="none", marker="o", color="0.35", label="scan run"),
        Line2D([], [], color="0.35", lw=0.7, alpha=0.6, label="mean loss per lr"),
        Line2D([], [], color="0.35", lw=1.4, label="parabola in log lr (best lr and its neighbours)"),
        Line2D([], [], color="0.35", lw=6, alpha=0.3, label=f"flat part: within {FLAT:.0%} of its minimum"),
        Line2D([], [], ls="none", marker="v", ms=8, color="0.35", mec="k", label="the rule's lr for this size"),
    ]
    if diverged:
        marks.append(Line2D([], [], ls="none", marker="x", color="0.35", label="diverged (no finite loss)"))
    sizes = ax.get_legend_handles_labels()  # the sizes' colours, named in the rule's panel
    ax.legend(handles=marks, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    worst = f"; the rule's lr costs at most {max(penalties):.2f}% over the minimum" if penalties else ""
    ax.set_title(f"learning-rate scan: loss against lr per model size{worst}", fontsize=10)
    _rule_panel(ax2, rule, data)
    rule_legend = ax2.get_legend()
    ax2.legend(*sizes, fontsize=8, loc="lower left", title="scanned size", title_fontsize=8)
    ax2.add_artist(rule_legend)
    return fig


def _rule_panel(ax, rule: dict, data) -> None:
    """Scanned optima against N, the fitted rule, and the rates the sweep applied."""
    ns = [num(o["n_params"]) for o, *_ in data]
    applied = [(num(a.get("n_params")), num(a.get("lr"))) for a in rule.get("applied") or () if isinstance(a, dict)]
    applied = [(n, lr) for n, lr in applied if n > 0 and lr > 0]
    allx = ns + [n for n, _ in applied]
    nn = np.logspace(math.log10(min(allx)) - 0.15, math.log10(max(allx)) + 0.15, 100)
    c, gamma = num(rule.get("c")), num(rule.get("gamma"))
    if math.isfinite(c) and math.isfinite(gamma):
        ax.plot(
            nn,
            [rule_lr(rule, n) for n in nn],
            "k-",
            lw=1.2,
            label=f"rule: lr = {c:.3g} (N / {sci(num(rule.get('n_ref', 1.0)))})" + rf"$^{{-{gamma:.3f}}}$",
        )
    if applied:
        ax.scatter(*zip(*applied), marker="x", s=50, color="tab:blue", zorder=6, label="lr applied in the sweep")
    ax.scatter([], [], marker="*", s=130, color="0.5", edgecolors="k", label="scan optimum (open: at the scan's edge)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    count = rule.get("count", "total")
    ax.set_xlabel("parameters N" + (" (non-embedding)" if count == "nonembed" else ""))
    ax.set_ylabel("peak learning rate")
    ax.set_title("the learning-rate rule", fontsize=10)
    ax.legend(fontsize=8)
