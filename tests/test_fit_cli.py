"""python -m analysis.fit: Chinchilla's numbers end to end, the sweep's CSV format, all
options' outputs against independent computations, bad input (exit 2, one line, before
any fitting, outputs untouched), plots, and the analysis notebook."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import fit as fitcli
from scaling import laws
from scaling.laws import approach1, approach2, approach3, bootstrap, holdout, lbfgs

REPO = Path(__file__).resolve().parents[1]
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TRUE_P = tuple(TRUE[k] for k in laws.PARAM_NAMES)
CLI_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def data_dir() -> Path:
    env = os.environ.get("SCALING_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def chinchilla_csv_or_skip() -> Path:
    path = data_dir() / "chinchilla" / "svg_extracted_data.csv"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {path}")
        pytest.skip(f"missing {path}")
    return path


def write_sweep_csv(path: Path, *, seed=0, n_budgets=5, n_sizes=7, arms=("base",), shift=None, diverged=2):
    """A results.csv in the sweep's format: IsoFLOP budgets, 1% noise, some diverged runs."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm in arms:
        E = TRUE["E"] + (shift or {}).get(arm, 0.0)
        for C in np.logspace(17, 19, n_budgets):
            n_opt = laws.compute_optimal(C, *TRUE_P)[0]
            for N in n_opt * np.logspace(-0.8, 0.8, n_sizes):
                D = C / (6 * N)
                loss = laws.law_loss(N, D, E, *TRUE_P[1:]) * math.exp(0.01 * rng.standard_normal())
                rows.append(dict(arm=arm, budget=C, n_params=N, tokens=D, val_loss=loss, status="completed"))
        for i in range(diverged):
            rows.append(
                dict(arm=arm, budget=1e18, n_params=1e7 * (i + 1), tokens=1e9, val_loss="nan", status="diverged")
            )
    lines = ["run_id,arm,n_params,n_params_nonembed,tokens,flops_6nd,flops_chinchilla,budget,val_loss,status"]
    for i, r in enumerate(rows):
        lines.append(
            f"r{i},{r['arm']},{r['n_params']:.6g},{0.9 * r['n_params']:.6g},{r['tokens']:.6g},"
            f"{6 * r['n_params'] * r['tokens']:.6g},{6.3 * r['n_params'] * r['tokens']:.6g},{r['budget']:.6g},"
            f"{r['val_loss']},{r['status']}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_curves(root: Path, sizes=np.logspace(6, 8, 9)) -> Path:
    for i, N in enumerate(sizes):
        run = root / "runs" / f"run{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"n_params": float(N), "status": "completed"}))
        flops = 6 * N * np.logspace(6, 10, 40)
        lines = []
        for step, fl in enumerate(flops):
            rec = {
                "step": step,
                "tokens": fl / (6 * N),
                "flops": fl,
                "loss": float(laws.law_loss(N, fl / (6 * N), *TRUE_P)),
            }
            if step % 10 == 0:
                rec["val_loss"] = rec["loss"]
            lines.append(json.dumps(rec))
            if step % 10 == 5:
                lines.append(json.dumps({"step": step, "val_loss": 3.0}))  # eval-only line: no loss/flops
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


FITTERS = {
    "fit_approach3": approach3,
    "fit_approach2": approach2,
    "fit_approach1": approach1,
    "bootstrap_approach3": bootstrap,
    "holdout_top_c": holdout,
    "lbfgs_batch": lbfgs,
}  # where each is looked up


def run_cli(args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "analysis.fit", *args], capture_output=True, text=True, cwd=REPO, env=CLI_ENV, **kw
    )


# ------------------------------------------------------------------ Chinchilla


def test_chinchilla_epoch_rerun_from_the_cli(tmp_path):
    """Epoch AI's re-run of Hoffmann's approach 3 on Chinchilla's data, run from the CLI."""
    csv = chinchilla_csv_or_skip()
    out = tmp_path / "fit.json"
    p = run_cli(
        [
            "--results",
            str(csv),
            "--n-col",
            "Model Size",
            "--c-col",
            "Training FLOP",
            "--loss-col",
            "loss",
            "--drop-top-loss",
            "5",
            "--out",
            str(out),
            "--predict-c",
            "5.76e23",
            "--no-progress",
        ],
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["n_points"] == 240 and res["n_starts"] == 4500
    for k, v in dict(A=477.8, B=2143.9, E=1.8172, alpha=0.3473, beta=0.3672).items():
        assert res[k] == pytest.approx(v, rel=0.01), k
    assert abs(res["a"] - 0.514) < 0.005
    G, a, b = laws.frontier(*(res[k] for k in laws.PARAM_NAMES))
    assert (res["G"], res["a"], res["b"]) == pytest.approx((G, a, b), rel=1e-12)
    # --predict-c: by hand from the printed parameters
    (pred,) = res["predict"]
    n_opt = G * (5.76e23 / 6) ** a
    d_opt = (5.76e23 / 6) ** b / G
    assert pred["N_opt"] == pytest.approx(n_opt, rel=1e-12) and pred["D_opt"] == pytest.approx(d_opt, rel=1e-12)
    assert pred["loss"] == pytest.approx(res["E"] + res["A"] / n_opt ** res["alpha"] + res["B"] / d_opt ** res["beta"])
    assert "predict C=5.76e+23" in p.stdout and "alpha = 0.347" in p.stdout


# --------------------------------------------------------- the sweep's format


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """One in-process run of everything on a sweep-format CSV with training curves."""
    tmp = tmp_path_factory.mktemp("sweep")
    csv = write_sweep_csv(tmp / "results.csv")
    curves = write_curves(tmp / "sweep")
    out, plots = tmp / "out" / "fit.json", tmp / "plots"
    rc = fitcli.main(
        [
            "--results",
            str(csv),
            "--approach",
            "all",
            "--curves",
            str(curves),
            "--bootstrap",
            "20",
            "--holdout-top-c",
            "4",
            "--predict-c",
            "1e20",
            "--out",
            str(out),
            "--plots",
            str(plots),
            "--no-progress",
        ]
    )
    assert rc == 0
    return csv, json.loads(out.read_text()), plots


def test_sweep_csv_defaults_and_status_filter(sweep_run):
    csv, res, _ = sweep_run
    assert res["n_points"] == 35  # the 2 diverged runs (loss NaN) are dropped
    assert res["input"]["n_col"] == "n_params" and res["input"]["loss_col"] == "val_loss"
    for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G", "loss"):
        assert math.isfinite(res[k])
    assert abs(res["a"] - 0.28 / 0.62) < 0.05


def test_bootstrap_intervals_in_the_json(sweep_run):
    _, res, _ = sweep_run
    assert res["ci_level"] == 0.95 and res["bootstrap"]["n_resamples"] == 20
    assert set(res["ci"]) == {"E", "A", "B", "alpha", "beta", "a", "b", "G"}
    for k, (lo, hi) in res["ci"].items():
        assert lo <= hi
    assert res["ci"]["a"][0] <= res["a"] <= res["ci"]["a"][1]
    lo, hi = res["predict"][0]["ci"]["N_opt"]
    assert lo <= res["predict"][0]["N_opt"] <= hi


def test_holdout_against_independent_computation(sweep_run):
    csv, res, _ = sweep_run
    import pandas as pd

    df = pd.read_csv(csv)
    df = df[df["status"] == "completed"]
    C = 6 * df["n_params"] * df["tokens"]
    top = df.loc[C.sort_values(ascending=False).index[:4]]
    h = res["holdout"]
    f = h["fit"]
    assert h["k"] == 4 and f["n_points"] == 31
    assert sorted(r["N"] for r in h["runs"]) == pytest.approx(sorted(top["n_params"]), rel=1e-9)
    for r in h["runs"]:
        pred = f["E"] + f["A"] / r["N"] ** f["alpha"] + f["B"] / r["D"] ** f["beta"]
        assert r["predicted"] == pytest.approx(pred, rel=1e-12)
        assert r["rel_error"] == pytest.approx((pred - r["observed"]) / r["observed"], rel=1e-9, abs=1e-15)
    assert h["mean_abs_rel_error"] == pytest.approx(np.mean([abs(r["rel_error"]) for r in h["runs"]]))


def test_approaches_1_and_2_in_the_json(sweep_run):
    _, res, _ = sweep_run
    a2 = res["approach2"]
    assert a2["budgets"] == "given" and len(a2["minima"]) == 5
    for m in a2["minima"]:
        assert m["D_opt"] == pytest.approx(m["C"] / (6 * m["N_opt"]))
    true_a = 0.28 / 0.62
    assert a2["a"] == pytest.approx(true_a, abs=0.08)
    a1 = res["approach1"]
    assert a1["n_runs"] == 9 and a1["a"] == pytest.approx(true_a, abs=0.08)
    assert a1["a"] + a1["b"] == pytest.approx(1.0)


def test_plots_written(sweep_run):
    *_, plots = sweep_run
    for name in ("isoflop", "frontier", "optimal_n", "pred_vs_obs", "residuals", "envelope"):
        p = plots / f"{name}.png"
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_group_col_fits_one_law_per_group(tmp_path, capsys):
    csv = write_sweep_csv(tmp_path / "results.csv", arms=("base", "curriculum"), shift={"curriculum": 0.3}, seed=1)
    out = tmp_path / "fit.json"
    assert fitcli.main(["--results", str(csv), "--group-col", "arm", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["group_col"] == "arm" and set(res["groups"]) == {"base", "curriculum"}
    g = res["groups"]
    assert g["base"]["n_points"] == g["curriculum"]["n_points"] == 35
    # each group's own data: refitting one group directly gives the same law
    runs = fitcli.load_runs(csv, group_col="arm")
    sel = runs.group == "curriculum"
    ref = laws.fit_approach3(runs.N[sel], runs.D[sel], runs.L[sel])
    assert g["curriculum"]["E"] == pytest.approx(ref.E, rel=1e-9)
    assert g["curriculum"]["E"] > g["base"]["E"]
    assert "arm = curriculum" in capsys.readouterr().out


def test_json_to_stdout_without_out(tmp_path, capsys):
    csv = write_sweep_csv(tmp_path / "results.csv", n_budgets=2, n_sizes=4, diverged=0)
    assert fitcli.main(["--results", str(csv), "--no-progress"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["n_points"] == 8 and "alpha =" in cap.err


def test_c_column_gives_d(tmp_path):
    """With a FLOPs column and no tokens column, D = C / (6N)."""
    csv = tmp_path / "runs.csv"
    csv.write_text(
        "N,C,loss\n" + "\n".join(f"{n},{c},{l}" for n, c, l in [(1e6, 6e12, 3.5), (2e6, 6e12, 3.4), (4e6, 6e12, 3.45)])
    )
    runs = fitcli.load_runs(csv, n_col="N", d_col="tokens", c_col="C", loss_col="loss")
    np.testing.assert_allclose(runs.D, [1e6, 5e5, 2.5e5])
    np.testing.assert_allclose(runs.C, 6e12)


def test_blank_budget_column_is_optional(tmp_path):
    """A grid sweep's results.csv may carry an empty budget column: approach 3 still runs,
    and approach 2 (under --approach all) groups runs by C instead."""
    csv = write_sweep_csv(tmp_path / "results.csv", n_budgets=3, n_sizes=5, diverged=0)
    text = csv.read_text().splitlines()
    bi = text[0].split(",").index("budget")
    rows = [r.split(",") for r in text[1:]]
    for r in rows:
        r[bi] = ""
    csv.write_text("\n".join([text[0], *(",".join(r) for r in rows)]) + "\n")
    runs = fitcli.load_runs(csv)
    assert runs.budget is None
    out = tmp_path / "fit.json"
    assert fitcli.main(["--results", str(csv), "--approach", "all", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["n_points"] == 15 and res["approach2"]["budgets"] == "grouped by C"
    assert len(res["approach2"]["minima"]) + len(res["approach2"]["skipped"]) == 3


# ------------------------------------------------------------------ bad input


def _bad_csvs(tmp: Path) -> dict[str, Path]:
    good = write_sweep_csv(tmp / "good.csv", n_budgets=3, n_sizes=4, diverged=0)
    text = good.read_text().splitlines()
    header, rows = text[0], text[1:]
    li = header.split(",").index("val_loss")

    def with_loss(value, row=2):
        cells = rows[row].split(",")
        cells[li] = value
        return "\n".join([header, *rows[:row], ",".join(cells), *rows[row + 1 :]]) + "\n"

    files = {
        "good": good,
        "nonpositive": tmp / "nonpos.csv",
        "nonnumeric": tmp / "nonnum.csv",
        "few": tmp / "few.csv",
        "empty": tmp / "empty.csv",
    }
    files["nonpositive"].write_text(with_loss("-0.5"))
    files["nonnumeric"].write_text(with_loss("abc"))
    files["few"].write_text("\n".join([header, *rows[:4]]) + "\n")
    files["empty"].write_text("")
    return files


BAD = [
    # (name, args builder, expected message fragment)
    ("missing file", lambda f, t: ["--results", str(t / "nope.csv")], "results file not found"),
    ("empty file", lambda f, t: ["--results", str(f["empty"])], "cannot read"),
    (
        "missing loss column",
        lambda f, t: ["--results", str(f["good"]), "--loss-col", "nope"],
        "missing column(s) 'nope' (--loss-col)",
    ),
    (
        "missing N column",
        lambda f, t: ["--results", str(f["good"]), "--n-col", "size"],
        "missing column(s) 'size' (--n-col)",
    ),
    ("missing D and C", lambda f, t: ["--results", str(f["good"]), "--d-col", "D"], "pass --d-col or --c-col"),
    ("missing C column", lambda f, t: ["--results", str(f["good"]), "--c-col", "flops"], "'flops' (--c-col) not in"),
    (
        "non-positive loss",
        lambda f, t: ["--results", str(f["nonpositive"])],
        "non-positive loss value(s) in column 'val_loss'",
    ),
    ("non-numeric loss", lambda f, t: ["--results", str(f["nonnumeric"])], "non-numeric value(s) (first: 'abc')"),
    (
        "fewer points than parameters",
        lambda f, t: ["--results", str(f["few"])],
        "4 runs is fewer than the 5 parameters",
    ),
    (
        "holdout leaves too few",
        lambda f, t: ["--results", str(f["good"]), "--holdout-top-c", "9"],
        "leaves 3 of 12 runs",
    ),
    (
        "approach 1 without curves",
        lambda f, t: ["--results", str(f["good"]), "--approach", "1"],
        "--approach 1 needs --curves",
    ),
    (
        "approach 1 empty curves dir",
        lambda f, t: ["--results", str(f["good"]), "--approach", "1", "--curves", str(t)],
        "at least 2 runs",
    ),
    (
        "approach 2 without budgets",
        lambda f, t: ["--results", str(f["few"]), "--approach", "2", "--budget-col", "none"],
        "approach 2 needs at least 2 IsoFLOP budgets",
    ),
    ("bad ci", lambda f, t: ["--results", str(f["good"]), "--bootstrap", "5", "--ci", "1.5"], "--ci must be in (0, 1)"),
    ("negative bootstrap", lambda f, t: ["--results", str(f["good"]), "--bootstrap", "-1"], "--bootstrap must be >= 0"),
    ("drop everything", lambda f, t: ["--results", str(f["good"]), "--drop-top-loss", "12"], "would drop all 12 runs"),
    ("bad predict", lambda f, t: ["--results", str(f["good"]), "--predict-c", "-1"], "--predict-c must be a positive"),
    (
        "missing group column",
        lambda f, t: ["--results", str(f["good"]), "--group-col", "nope"],
        "'nope' (--group-col) not in",
    ),
    (
        "bootstrap without approach 3",
        lambda f, t: ["--results", str(f["good"]), "--approach", "2", "--bootstrap", "5"],
        "use approach 3",
    ),
]


@pytest.mark.parametrize("name,build,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_before_any_fitting(name, build, message, tmp_path, capsys, monkeypatch):
    files = _bad_csvs(tmp_path)
    out = tmp_path / "fit.json"
    out.write_text("previous result\n")
    plots = tmp_path / "plots"

    def no_compute(*a, **k):
        raise AssertionError("fitting started before the input was validated")

    for fn in (
        "fit_approach3",
        "fit_approach2",
        "fit_approach1",
        "bootstrap_approach3",
        "holdout_top_c",
        "lbfgs_batch",
    ):
        monkeypatch.setattr(FITTERS[fn], fn, no_compute)
    with pytest.raises(SystemExit) as e:
        fitcli.main([*build(files, tmp_path), "--out", str(out), "--plots", str(plots), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err
    assert out.read_text() == "previous result\n"
    assert not plots.exists()


def test_bad_input_subprocess_exit_code(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text(
        "n_params,tokens,val_loss\n1e6,1e9,3.0\n2e6,1e9,0\n3e6,1e9,2.9\n4e6,1e9,2.8\n5e6,1e9,2.7\n6e6,1e9,2.6\n"
    )
    p = run_cli(["--results", str(csv)], timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "non-positive loss" in p.stderr
    assert p.stdout == ""


# ------------------------------------- annealed endpoints, approach 2 intervals, diagnostics

EPOCH = (1.8172, 477.8, 2143.4, 0.3473, 0.3672)


def write_shared_sizes_csv(path: Path, *, noise=0.003, seed=0):
    """An IsoFLOP results.csv whose sizes recur across 4 budgets (each size's runs are its
    annealed endpoints), Chinchilla's law (Epoch's fit), 0.3% noise; the non-embedding
    count is N less a 2,000-parameter embedding."""
    rng = np.random.default_rng(seed)
    grid = np.logspace(5.6, 8.6, 11)
    lines = ["run_id,n_params,n_params_nonembed,tokens,budget,val_loss,status"]
    for C in np.logspace(17, 18.5, 4):
        n_opt = laws.compute_optimal(C, *EPOCH)[0]
        for N in grid[np.abs(np.log10(grid / n_opt)) <= 0.9]:
            D = C / (6 * N)
            loss = laws.law_loss(N, D, *EPOCH) * math.exp(noise * rng.standard_normal())
            lines.append(f"r{len(lines)},{N:.8g},{N - 2000:.8g},{D:.8g},{C:.6g},{loss:.8f},completed")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    csv = write_shared_sizes_csv(tmp / "results.csv")
    runs = fitcli.load_runs(csv)
    baseline = float(np.sort(runs.L)[-2])  # the highest-loss run is not below it
    out = tmp / "fit.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fitcli.main(
            [
                "--results",
                str(csv),
                "--approach",
                "all",
                "--approach1-from",
                "endpoints",
                "--bootstrap",
                "30",
                "--diagnostics",
                "--baseline-loss",
                repr(baseline),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert rc == 0
    return runs, baseline, json.loads(out.read_text()), buf.getvalue()


def test_diagnostics_in_the_json_and_the_report(diagnosed):
    runs, baseline, res, text = diagnosed
    for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G", "ci", "bootstrap", "approach2", "approach1", "input"):
        assert k in res  # the existing keys stay
    diag = res["diagnostics"]
    checks = {c["name"]: c for c in diag["checks"]}
    assert len(checks) == 13
    below = checks["regime.below_baseline"]
    assert below["value"] == pytest.approx(runs.L.max()) and below["threshold"] == baseline
    assert diag["failed"] == ["regime.below_baseline"] and diag["not_evaluated"] == []
    assert diag["passed"] is False and diag["verdict"] == "FAIL: 1 failed: regime.below_baseline"
    assert "[FAIL] regime.below_baseline: highest run loss" in text
    assert "verdict: FAIL: 1 failed: regime.below_baseline" in text
    assert text.count("[pass]") == 12
    # the stability check refitted the non-embedding count; the E interval is the bootstrap's
    assert checks["stable.n_count"]["details"]["a"][0] == pytest.approx(res["a"])
    assert checks["non_degenerate.E_lower"]["value"] == pytest.approx(res["ci"]["E"][0])


def test_approach2_intervals_and_approach1_endpoints_in_the_json(diagnosed):
    from scaling.laws.approach1 import fit_approach1_endpoints

    runs, _, res, text = diagnosed
    a2 = res["approach2"]
    assert a2["ci_level"] == 0.95 and a2["bootstrap"]["method"] == "residual"
    assert a2["bootstrap"]["n_resamples"] == 30
    lo, hi = a2["ci"]["a"]
    assert lo <= a2["a"] <= hi
    assert [b["C"] for b in a2["budget_ci"]] == [m["C"] for m in a2["minima"]]
    for b, m in zip(a2["budget_ci"], a2["minima"]):
        assert b["N_opt"][0] <= m["N_opt"] <= b["N_opt"][1]
    assert "approach 2 95% intervals (30 residual resamples)" in text
    a1 = res["approach1"]
    ref = fit_approach1_endpoints(runs.N, runs.C, runs.L)
    assert a1["input"] == "annealed endpoints" and a1["a"] == pytest.approx(ref["a"], rel=1e-12)
    assert abs(a1["a"] - EPOCH[4] / (EPOCH[3] + EPOCH[4])) < 0.05
    assert "annealed endpoints of" in text


def write_endpoint_runs(root: Path) -> Path:
    """Run directories as a warmup-stable-decay sweep might write them: per size, a
    stable-phase run (not annealed) and its cooldown endpoints as marked metrics lines."""
    budgets = np.logspace(math.log10(8e11), math.log10(6e12), 4)
    for i, N in enumerate(np.logspace(math.log10(3.5e4), math.log10(3.5e5), 6)):
        run = root / "runs" / f"size{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "n_params": N,
                    "status": "completed",
                    "annealed": False,
                    "flops_6nd": float(budgets[-1]),
                    "val_loss": 9.0,
                }
            )
        )
        lines = [json.dumps({"step": 1, "flops": float(budgets[0]) / 2, "loss": 9.0, "val_loss": 9.0})]
        for C in budgets:
            lines.append(
                json.dumps(
                    {
                        "step": 2,
                        "flops": float(C),
                        "val_loss": float(laws.law_loss(N, C / (6 * N), *EPOCH)),
                        "endpoint": True,
                    }
                )
            )
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_load_endpoints_reads_final_points_and_marked_cooldowns(tmp_path):
    from scaling.run_curves import load_endpoints

    root = tmp_path / "sweep"
    for name, summary, metrics in [
        ("a", {"n_params": 1e5, "flops_6nd": 6e12, "val_loss": 2.5, "status": "completed"}, None),
        (
            "b",
            {"n_params": 2e5, "flops_6nd": 6e12, "val_loss": 2.4, "status": "completed"},
            [
                {"flops": 1e12, "val_loss": 2.9, "endpoint": True},
                {"flops": 2e12, "loss": 2.7},
                {"flops": 3e12, "val_loss": 2.6, "endpoint": True},
            ],
        ),
        ("c", {"n_params": 3e5, "flops_6nd": 6e12, "val_loss": 3.3, "status": "completed", "annealed": False}, None),
        ("d", {"n_params": 4e5, "flops_6nd": 6e12, "val_loss": 2.0, "status": "diverged"}, None),
    ]:
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "summary.json").write_text(json.dumps(summary))
        if metrics:
            (root / "runs" / name / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    N, C, L = load_endpoints(root)
    assert N.tolist() == [1e5, 2e5, 2e5] and C.tolist() == [6e12, 1e12, 3e12] and L.tolist() == [2.5, 2.9, 2.6]
    (root / "runs" / "b" / "metrics.jsonl").write_text(json.dumps({"flops": 1e12, "endpoint": True}) + "\n")
    with pytest.raises(fitcli.UsageError, match="'val_loss' must be a positive number"):
        load_endpoints(root)


def test_approach1_from_endpoint_runs_cli(tmp_path, capsys):
    from scaling.laws.approach1 import fit_approach1_endpoints
    from scaling.run_curves import load_endpoints

    root = write_endpoint_runs(tmp_path / "sweep")
    csv = write_shared_sizes_csv(tmp_path / "results.csv")
    out, plots = tmp_path / "fit.json", tmp_path / "plots"
    assert (
        fitcli.main(
            [
                "--results",
                str(csv),
                "--approach",
                "1",
                "--approach1-from",
                "endpoints",
                "--curves",
                str(root),
                "--out",
                str(out),
                "--plots",
                str(plots),
                "--no-progress",
            ]
        )
        == 0
    )
    a1 = json.loads(out.read_text())["approach1"]
    assert a1["n_runs"] == 6 and a1["n_endpoints"] == 24  # the stable-phase runs' own ends are left out
    assert a1["a"] == pytest.approx(fit_approach1_endpoints(*load_endpoints(root))["a"], rel=1e-12)
    assert abs(a1["a"] - EPOCH[4] / (EPOCH[3] + EPOCH[4])) < 0.03
    assert (plots / "envelope.png").read_bytes()[:4] == b"\x89PNG"


BAD_CHECKS = [
    ("diagnostics without bootstrap", ["--diagnostics"], "--diagnostics needs --bootstrap"),
    (
        "baseline without diagnostics",
        ["--bootstrap", "5", "--baseline-loss", "2.0"],
        "--baseline-loss is used by --diagnostics",
    ),
    (
        "negative baseline",
        ["--bootstrap", "5", "--diagnostics", "--baseline-loss", "-1"],
        "--baseline-loss must be a positive",
    ),
    ("missing alt column", ["--bootstrap", "5", "--diagnostics", "--alt-n-col", "nope"], "missing column(s) 'nope'"),
    ("endpoints without shared sizes", ["--approach", "1", "--approach1-from", "endpoints"], "at least 3 model sizes"),
]


@pytest.mark.parametrize("name,args,message", BAD_CHECKS, ids=[b[0] for b in BAD_CHECKS])
def test_bad_diagnostics_input_exits_2_before_any_fitting(name, args, message, tmp_path, capsys, monkeypatch):
    files = _bad_csvs(tmp_path)
    out = tmp_path / "fit.json"
    out.write_text("previous result\n")

    def no_compute(*a, **k):
        raise AssertionError("fitting started before the input was validated")

    for fn in ("fit_approach3", "fit_approach2", "bootstrap_approach3", "holdout_top_c", "lbfgs_batch"):
        monkeypatch.setattr(FITTERS[fn], fn, no_compute)
    with pytest.raises(SystemExit) as e:
        fitcli.main(["--results", str(files["good"]), *args, "--out", str(out), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert out.read_text() == "previous result\n"
