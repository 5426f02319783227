"""The sweep's plotter (analysis.sweep_plots.plot_sweep) on a synthetic sweep directory: an
IsoFLOP design drawn from a known law with cooldown branches and training curves, fitted by
the real fitters (small bootstraps), and a learning-rate scan with its rule; nothing is trained."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread

from analysis import run_plots, sweep_plots
from analysis.plots import fit_figures
from analysis.residual_plots import held_out, residuals
from scaling import sweep
from scaling.laws import approach2, approach3, bootstrap, checks, holdout
from scaling.laws.law import compute_optimal, law_loss
from scaling.laws.result import FitOutput, FitResult
from scaling.laws.verdict import Verdict
from tests.helpers import REPO

SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"
LAW = (1.2, 60.0, 80.0, 0.35, 0.30)  # E, A, B, alpha, beta
BUDGETS = (1e12, 3e12, 1e13)
SIZES = np.geomspace(2e4, 1.6e6, 9)
TPS = 4096  # tokens per step
COLS = [
    "run_id",
    "n_layer",
    "d_model",
    "n_head",
    "n_params",
    "tokens",
    "steps",
    "val_loss",
    "status",
    "budget",
    "parent",
    "stable_steps",
    "lr",
]
FIT_PLOTS = ("isoflop", "optimal_n", "residuals", "frontier", "pred_vs_obs")
RUN_PLOTS = ("training_curves", "loss_vs_n", "lr_scan")


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS + [k for k in rows[0] if k not in COLS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _metrics(path, n, steps, first=0, end_loss=None, start_loss=None):
    """Training losses of a constant-rate run (3% above the annealed law), or of a cooldown
    from first to steps that falls from start_loss to end_loss (both ways a little noise)."""
    rng = np.random.default_rng(int(n) + steps)
    every = max(1, steps // 150)
    lines = []
    for s in range(max(first, 1), steps + 1, every):
        if end_loss is None:
            loss = 1.03 * law_loss(n, s * TPS, *LAW)
        else:
            f = (s - first) / (steps - first)
            loss = start_loss + (end_loss - start_loss) * f
        loss *= 1 + 0.01 * rng.standard_normal()
        lines.append(json.dumps({"step": s, "tokens": s * TPS, "flops": 6 * n * s * TPS, "loss": float(loss)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _design():
    """Per budget the 5 sizes nearest its optimum; per size the largest-D run is trained from
    scratch and every smaller D is a cooldown branch of it."""
    rng = np.random.default_rng(0)
    runs = []
    for c in BUDGETS:
        n_opt = compute_optimal(c, *LAW)[0]
        near = SIZES[np.argsort(np.abs(np.log(SIZES / n_opt)))[:5]]
        for n in sorted(near):
            d = c / (6 * n)
            runs.append(
                {
                    "n": float(n),
                    "budget": c,
                    "steps": max(2, round(d / TPS)),
                    "val": float(law_loss(n, d, *LAW) * (1 + 0.002 * rng.standard_normal())),
                }
            )
    rows = []
    for n in sorted({r["n"] for r in runs}):
        mine = sorted((r for r in runs if r["n"] == n), key=lambda r: -r["steps"])
        parent = f"N{n:.0f}_{mine[0]['budget']:.0e}"
        for i, r in enumerate(mine):
            rid = f"N{n:.0f}_{r['budget']:.0e}"
            rows.append(
                {
                    "run_id": rid,
                    "n_layer": 2,
                    "d_model": int(n) // 1000,
                    "n_head": 2,
                    "n_params": int(n),
                    "tokens": r["steps"] * TPS,
                    "steps": r["steps"],
                    "val_loss": r["val"],
                    "status": "completed",
                    "budget": r["budget"],
                    "parent": "" if i == 0 else parent,
                    "stable_steps": "" if i == 0 else int(0.8 * r["steps"]),
                    "lr": 0.002,
                }
            )
    return rows


def _lr_scan(out):
    """Three sizes x five learning rates, a parabola in log lr centred on lr = 0.02 (N / 1e5)^-0.3."""
    rows, optima = [], []
    for k, n in enumerate((3e4, 1e5, 3e5)):
        lr_opt = 0.02 * (n / 1e5) ** -0.3
        lrs = [lr_opt * f for f in (0.25, 0.5, 1, 2, 4)]
        losses = [3.0 - 0.3 * k + 0.05 * math.log(lr / lr_opt) ** 2 for lr in lrs]
        for lr, lo in zip(lrs, losses):
            rows.append(
                {
                    "run_id": f"s{k}_lr{lr:.2e}",
                    "n_layer": 2,
                    "d_model": 32 * (k + 1),
                    "n_head": 2,
                    "n_params": int(n),
                    "val_loss": lo,
                    "status": "completed",
                    "lr": lr,
                }
            )
        optima.append(
            {
                "n_params": int(n),
                "shape": f"L2-d{32 * (k + 1)}-h2",
                "lr_opt": lr_opt,
                "lrs": lrs,
                "losses": losses,
                "in_range": True,
            }
        )
    _write_csv(out / "lr_scan" / "results.csv", rows)
    rule = {
        "c": 0.02,
        "gamma": 0.3,
        "formula": "lr = c * (N / n_ref)^-gamma",
        "n_ref": 1e5,
        "count": "total",
        "optima": optima,
        "applied": [{"n_params": int(n), "shape": "", "lr": 0.02 * (n / 1e5) ** -0.3} for n in SIZES[::2]],
    }
    (out / "lr_rule.json").write_text(json.dumps(rule))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(plan, sweep directory, FitOutput) of the synthetic sweep."""
    out = tmp_path_factory.mktemp("sweep")
    rows = _design()
    _write_csv(out / "results.csv", rows)
    by_n = {}
    for r in rows:
        by_n.setdefault(r["n_params"], []).append(r)
    for r in rows:
        n, run = r["n_params"], out / "runs" / r["run_id"]
        if not r["parent"]:
            _metrics(run / "metrics.jsonl", n, r["steps"])
        else:
            start = 1.03 * law_loss(n, r["stable_steps"] * TPS, *LAW)
            _metrics(
                run / "metrics.jsonl", n, r["steps"], first=r["stable_steps"], start_loss=start, end_loss=r["val_loss"]
            )
    _lr_scan(out)
    plan = sweep.make_plan(sweep.load_spec(SMOKE), {}, load_data=False)
    runs = sweep.load_sweep_runs(plan, out)
    law = approach3.fit_approach3(runs.N, runs.D, runs.L)
    a2 = approach2.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget)
    result = FitResult(
        approach3=law,
        bootstrap=bootstrap.bootstrap_approach3(runs.N, runs.D, runs.L, law, 12, n_starts=4),
        holdout=holdout.holdout_top_c(runs.N, runs.D, runs.L, 5, C=runs.C, starts=law.ranked_starts[:64]),
        approach2=a2,
        approach2_ci=approach2.bootstrap_approach2(runs.N, runs.L, runs.C, a2, 50, budgets=runs.budget),
    )
    return plan, out, runs, FitOutput(fit=result, input={"n_runs": len(runs)})


def _assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path.name
    img = imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 600, path.name
    assert float(img[..., :3].std()) > 0.05, f"{path.name} is nearly blank"


def test_every_plot_drawn(synthetic):
    plan, out, _, fit = synthetic
    paths = sweep_plots.plot_sweep(plan, out, fit)
    names = {p.stem for p in paths}
    assert names == set(FIT_PLOTS + RUN_PLOTS), names
    for name in names:
        _assert_png(out / "plots" / f"{name}.png")
    assert not (out / "plots" / "skipped.json").exists()


def test_missing_lr_scan_skips_only_that_plot(synthetic, tmp_path):
    plan, out, _, fit = synthetic
    for p in out.rglob("*"):  # a copy without lr_rule.json
        if p.is_file() and p.name != "lr_rule.json" and "plots" not in p.parts:
            (tmp_path / p.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / p.relative_to(out)).write_bytes(p.read_bytes())
    paths = sweep_plots.plot_sweep(plan, tmp_path, fit, dpi=40)
    skipped = json.loads((tmp_path / "plots" / "skipped.json").read_text())
    assert list(skipped) == ["lr_scan"] and "lr_rule.json missing" in skipped["lr_scan"]
    assert {p.stem for p in paths} == set(FIT_PLOTS + RUN_PLOTS) - {"lr_scan"} | {"skipped"}
    assert not (tmp_path / "plots" / "lr_scan.png").exists()


def test_no_fit_still_draws_the_runs(synthetic, tmp_path):
    """A sweep whose fit failed still gets its training curves and IsoFLOP runs; the fit's other
    plots are skipped with a reason."""
    plan, out, _, _ = synthetic
    paths = sweep_plots.plot_sweep(plan, out, FitOutput(error="no fit: too few runs"), dpi=40)
    names = {p.stem for p in paths}
    assert {"isoflop", "training_curves", "loss_vs_n", "lr_scan", "skipped"} == names  # isoflop: the runs alone
    skipped = json.loads((out / "plots" / "skipped.json").read_text())
    assert set(skipped) == {"optimal_n", "residuals", "frontier", "pred_vs_obs"}
    assert skipped["residuals"] == "no approach-3 law with finite parameters"


def test_arms_get_a_directory_each(synthetic, tmp_path):
    plan, out, _, fit = synthetic
    rows = sweep_plots.read_rows(out / "results.csv")
    _write_csv(tmp_path / "results.csv", [{**r, "arm": arm} for arm in ("base", "other") for r in rows])
    for p in (out / "runs").rglob("metrics.jsonl"):
        (tmp_path / p.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p.relative_to(out)).write_bytes(p.read_bytes())
    (tmp_path / "lr_scan").mkdir()
    for name in ("lr_scan/results.csv", "lr_rule.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    armed = SimpleNamespace(spec=plan.spec, base=plan.base, has_arms=True)
    fits = FitOutput(groups={"base": fit.fit, "other": fit.fit}, group_col="arm")
    paths = {str(p.relative_to(tmp_path)) for p in sweep_plots.plot_sweep(armed, tmp_path, fits, dpi=40)}
    for arm in ("base", "other"):
        assert {f"plots/{arm}/{n}.png" for n in FIT_PLOTS + ("training_curves", "loss_vs_n")} <= paths
    assert "plots/lr_scan.png" in paths and not (tmp_path / "plots" / "skipped.json").exists()


def test_axes_carry_units_and_bands(synthetic):
    plan, _, runs, fit = synthetic
    assert sweep_plots.units(plan) == ("nats/byte", "nats/byte")
    figs, skipped = fit_figures(runs, fit.fit, ylabel="final validation loss (nats/byte)")
    assert not skipped
    ax = figs["isoflop"].axes[0]
    assert "nats/byte" in ax.get_ylabel() and ax.get_xscale() == "log"
    assert len(ax.collections) >= len(BUDGETS) * 3  # per budget: runs, band, the law's optimum
    n_ax, d_ax = figs["optimal_n"].axes[:2]
    assert n_ax.get_yscale() == d_ax.get_yscale() == "log"
    labels = n_ax.get_legend_handles_labels()[1]
    assert any(t.startswith("approach 3: a = ") and "[" in t for t in labels)  # with its interval
    assert "compute range of the runs" in labels
    res = figs["residuals"].axes[0]
    assert "%" in res.get_ylabel()
    assert any(t.startswith("held out") for t in res.get_legend_handles_labels()[1])


def test_residuals_mark_the_extrapolation_diagnostics_budget(synthetic):
    """Without a hold-out fit, the residual plot takes the held-out budget and its law from the
    extrapolation diagnostic's details."""
    _, _, runs, fit = synthetic
    verdict = Verdict(
        tuple(
            checks.check_extrapolation(
                runs.N, runs.D, runs.L, runs.C, budgets=runs.budget, starts=fit.fit.law.ranked_starts[:64]
            )
        )
    )
    result = dataclasses.replace(fit.fit, holdout=None, diagnostics=verdict)
    held, what = held_out(runs, result)
    top = runs.budget == max(BUDGETS)
    assert what == "held out: the largest budget" and len(held) == top.sum() == 5
    rel = [pred / obs - 1 for *_, obs, pred in held]
    assert rel == pytest.approx(verdict.checks[0].details["rel_errors"])
    labels = residuals(runs, result).axes[0].get_legend_handles_labels()[1]
    assert any(t.startswith("held out: the largest budget") for t in labels)
    assert held_out(runs, dataclasses.replace(result, diagnostics=None)) == ([], "")


@pytest.mark.parametrize("parents_in_table", [True, False])
def test_branches_fork_from_their_parent(synthetic, parents_in_table):
    """Each branch is drawn from its parent's curve at its stable_steps, whether or not the
    parent (the stable phase) is a row of results.csv."""
    _, out, _, _ = synthetic
    rows = sweep_plots.read_rows(out / "results.csv")
    branches = [r for r in rows if r["parent"]]
    shown = rows if parents_in_table else branches
    fig = run_plots.training_curves(shown, out / "runs", unit="nats/byte")
    drawn = {r["run_id"] for r in shown} | {r["parent"] for r in shown if r["parent"]}
    h = run_plots.half_window(
        run_plots.read_metrics(out / "runs" / rid / "metrics.jsonl")["step"].size for rid in drawn
    )
    assert branches and f"and {len(branches)} cooldown branches" in fig.axes[0].get_title()
    # each branch line starts on its parent's (smoothed) curve at its stable_steps
    starts = {
        (round(float(line.get_xdata()[0])), float(line.get_ydata()[0]))
        for line in fig.axes[0].lines
        if len(line.get_xdata()) > 1
    }
    for b in branches:
        pc = run_plots.read_metrics(out / "runs" / b["parent"] / "metrics.jsonl")
        x0 = round(float(np.interp(float(b["stable_steps"]), pc["step"], pc["tokens"])))
        y0 = float(np.interp(float(b["stable_steps"]), pc["step"], run_plots.smooth(pc["loss"], h)))
        assert any(x == x0 and y == pytest.approx(y0) for x, y in starts), b["run_id"]


def test_lr_scan_marks_the_rule_inside_the_flat_part(synthetic):
    _, out, _, _ = synthetic
    rule = json.loads((out / "lr_rule.json").read_text())
    fig = run_plots.lr_scan(sweep_plots.read_rows(out / "lr_scan" / "results.csv"), rule, unit="nats/byte")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "nats/byte" in ax.get_ylabel()
    assert "costs at most 0.00%" in ax.get_title()  # the rule sits at each parabola's vertex
    assert run_plots.lr_scan([], {"optima": []}, unit="nats/byte") is None
    # a diverged rate (no finite loss) is marked at the top edge and left out of the curve
    top = rule["optima"][-1]
    top["losses"] = top["losses"][:-1] + [None]
    ax = run_plots.lr_scan([], rule, unit="nats/byte").axes[0]
    assert "diverged (no finite loss)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "costs at most 0.00%" in ax.get_title()
