"""A learning rate per model size: the pilot scan's optimum per size and the rule lr(N) fitted to
synthetic scans with known optima, the per-size warmup and init, plans made with a rule, bad
lr_scan specs, waiting for other shards' scan runs, and a tiny sweep with a scan end to end."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import sweep as sweep_cli
from scaling import sweep
from scaling.errors import UsageError
from scaling.run_dir import read_config
from scaling.sweep import hparams, pilot
from scaling.sweep.spec import PerSizeSpec
from tests.helpers import data_path

BASE = """
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32, vocab_size: 257}
  optim: {lr: 0.002}
  train: {batch_size: 8, eval_every: 1000, eval_batches: 2, log_every: 5, progress: false}
"""
GRID = "grid: {models: [{n_layer: 1, d_model: 16}, {n_layer: 2, d_model: 32}], tokens: [2048, 4096]}\nfit: false\n"


def spec_of(tmp_path: Path, text: str) -> sweep.Spec:
    p = tmp_path / "spec.yaml"
    p.write_text(BASE + text)
    return sweep.load_spec(p)


def parabola_scan(n: float, lr_opt: float, lrs: list[float]) -> list[tuple[int, str, float, float]]:
    """Losses exactly quadratic in log(lr) with the vertex at lr_opt."""
    return [(int(n), f"N{int(n)}", lr, 3.0 + 0.3 * math.log(lr / lr_opt) ** 2) for lr in lrs]


# ------------------------------------------------------------------ the fit


@pytest.mark.parametrize("sizes", [[1e4, 3e4, 1e5, 3e5], [2e4, 5e5]])
def test_rule_fit_recovers_c_and_gamma_from_parabolas_with_known_optima(sizes):
    c, gamma, n_ref = 6e-3, 0.37, 5e4
    lrs = [1e-4 * 2**k for k in range(12)]  # 1e-4 .. 0.2, not centred on any optimum
    points = [p for n in sizes for p in parabola_scan(n, c * (n / n_ref) ** -gamma, lrs)]
    rule = pilot.fit_rule(points, "total")
    assert rule.gamma == pytest.approx(gamma, abs=1e-9)
    assert rule.n_ref == pytest.approx(math.exp(sum(map(math.log, sizes)) / len(sizes)))
    assert rule.c * (n_ref / rule.n_ref) ** -rule.gamma == pytest.approx(c, rel=1e-9)  # the same line
    for o, n in zip(rule.optima, sizes):
        assert o.n_params == int(n) and o.in_range and o.lr_opt == pytest.approx(c * (n / n_ref) ** -gamma, rel=1e-9)
        assert rule.lr(n) == pytest.approx(o.lr_opt, rel=1e-3)  # 4 significant digits
    d = rule.to_dict()
    assert set(d) == {"c", "gamma", "formula", "n_ref", "count", "optima", "applied"}
    assert d["formula"] == "lr = c * (N / n_ref)^-gamma" and hparams.LrRule.from_dict(json.loads(json.dumps(d))) == rule


def test_optimum_in_range_detection():
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    assert pilot.optimum(lrs, [3.0, 2.5, 2.6, 2.9]) == (pytest.approx(2.0e-3 * 2 ** (1 / 3)), True)
    assert pilot.optimum(lrs, [2.0, 2.5, 2.6, 2.9]) == (1e-3, False)  # best at the low end
    assert pilot.optimum(lrs, [3.0, 2.9, 2.6, 2.5]) == (8e-3, False)  # best at the high end
    assert pilot.optimum(lrs, [3.0, 2.5, None, None]) == (2e-3, True)  # bracketed by a diverged rate
    assert pilot.optimum(lrs[::-1], [2.9, 2.6, 2.5, 3.0]) == (pytest.approx(2.0e-3 * 2 ** (1 / 3)), True)
    with pytest.raises(UsageError, match="diverged"):
        pilot.optimum(lrs, [None, float("nan"), None, float("inf")])
    rule = pilot.fit_rule(parabola_scan(1e4, 0.5, lrs) + parabola_scan(4e4, 2e-3, lrs), "total")
    assert [o.in_range for o in rule.optima] == [False, True]
    report = pilot.rule_report(rule)
    assert "WARNING" in report and "N1e4" not in report and "largest one scanned (0.008)" in report


# ------------------------------------------------------------------ per-size settings


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 10**9),
    shortest=st.integers(1, 10**6),
    tps=st.integers(1, 10**6),
    k=st.floats(0.01, 100),
    f=st.floats(0.001, 1),
)
def test_warmup_rule_is_n_tokens_capped_at_a_fraction_of_the_shortest_run(n, shortest, tps, k, f):
    w = hparams.warmup_steps(n, shortest, tps, PerSizeSpec(k, f))
    assert 0 <= w <= f * shortest + 1e-6  # capped
    assert w == min(math.ceil(k * n / tps - 1e-9), math.floor(f * shortest + 1e-9))


def test_every_run_of_a_size_gets_one_warmup_and_a_width_scaled_init(tmp_path):
    spec = spec_of(
        tmp_path,
        GRID.replace("[2048, 4096]", "[20480, 81920, 40960]")
        + "per_size: {warmup_tokens_per_param: 0.1, init_scale: 0.5}\n",
    )
    plan = sweep.make_plan(spec, {}, load_data=False)
    for d in (16, 32):
        runs = [r for r in plan.runs if r.cfg.model.d_model == d]
        shortest = min(r.steps for r in runs)
        want = min(math.ceil(0.1 * runs[0].n_params / 256), math.floor(0.05 * shortest))
        assert {r.cfg.optim.warmup_steps for r in runs} == {want} and len(runs) == 3
        assert {r.cfg.model.init_std for r in runs} == {float(f"{0.5 / math.sqrt(d):.4g}")}
    assert [r.cfg.optim.warmup_steps for r in plan.runs if r.cfg.model.d_model == 32] == [4, 4, 4]  # the cap
    assert "warmup per size" in sweep.format_plan(plan)
    with pytest.raises(UsageError, match="--optim.warmup_steps is set by the sweep design"):
        sweep.make_plan(spec, {"optim": {"warmup_steps": "5"}}, load_data=False)
    plain = sweep.make_plan(spec_of(tmp_path, GRID), {}, load_data=False)  # no per_size: the base config
    assert {(r.cfg.optim.warmup_steps, r.cfg.model.init_std) for r in plain.runs} == {(100, 0.02)}


def test_make_plan_applies_the_rule(tmp_path):
    fixed = spec_of(tmp_path, GRID + "lr_rule: {c: 4e-3, gamma: 0.5, n_ref: 1e4}\n")
    plan = sweep.make_plan(fixed, {}, load_data=False)
    for r in plan.runs:
        assert r.cfg.optim.lr == float(f"{4e-3 * (r.n_params / 1e4) ** -0.5:.4g}")
    assert len({r.cfg.optim.lr for r in plan.runs}) == 2 and "given by the spec" in sweep.format_plan(plan)
    with pytest.raises(UsageError, match="--optim.lr is set by the sweep design"):
        sweep.make_plan(fixed, {"optim": {"lr": "0.1"}}, load_data=False)

    scanned = spec_of(tmp_path, GRID + "lr_scan: {lrs: [1e-3, 1e-2], flops: 1e9}\nsizing: {count: nonembed}\n")
    provisional = sweep.make_plan(scanned, {}, load_data=False)
    assert provisional.lr_rule is None and {r.cfg.optim.lr for r in provisional.runs} == {0.002}
    assert "lr from the scan" in sweep.format_plan(provisional) and "provisional" in sweep.format_plan(provisional)
    rule = hparams.LrRule(c=3e-3, gamma=0.25, n_ref=2e4, count="nonembed")
    plan = sweep.make_plan(scanned, {}, load_data=False, lr_rule=rule)
    assert [r.cfg.optim.lr for r in plan.runs] == [rule.lr(r.n_params_nonembed) for r in plan.runs]
    assert [r.run_id for r in plan.runs] == [r.run_id for r in provisional.runs]
    applied = hparams.with_applied(rule, scanned, plan.runs).applied
    assert [(a.shape, a.n_params) for a in applied] == [
        ("L1-d16-h1", plan.runs[0].n_params_nonembed),
        ("L2-d32-h2", plan.runs[1].n_params_nonembed),
    ]

    scan = pilot.plan_scan(scanned, {}, provisional, load_data=False)  # the design's smallest and largest size
    assert [(r.cfg.model.d_model, r.cfg.optim.lr) for r in scan.runs] == [
        (16, 1e-3),
        (16, 1e-2),
        (32, 1e-3),
        (32, 1e-2),
    ]
    assert all(r.run_id.endswith(("-lr0.001", "-lr0.01")) for r in scan.runs) and not scan.spec.fit


# ------------------------------------------------------------------ bad specs


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr_scan: {lrs: [1e-3, 2e-3]}", "needs lrs"),
        ("lr_scan: {lrs: [1e-3], flops: 1e9}", "2 or more distinct"),
        ("lr_scan: {lrs: [1e-3, 1e-3], flops: 1e9}", "2 or more distinct"),
        ("lr_scan: {lrs: [1e-3, -2], flops: 1e9}", "positive number"),
        ("lr_scan: {lrs: [1e-3, 2e-3], flops: 1e9, models: 1}", "2 or more sizes"),
        ("lr_scan: {lrs: [1e-3, 2e-3], flops: 1e9, model: 2}", "unknown key 'model'"),
        ("lr_scan: {lrs: [1e-3, 2e-3], flops: 1e3}", "lr_scan.flops 1000 is too small"),
        ("lr_scan: {lrs: [1e-3, 2e-3], flops: 1e9}\nlr_rule: {c: 1e-3, gamma: 0, n_ref: 1e4}", "not both"),
        ("lr_rule: {c: 1e-3, gamma: 0.1}", "needs c, gamma and n_ref"),
        ("per_size: {warmup_max_fraction: 2}", "at most 1"),
    ],
)
def test_bad_lr_scan_specs_exit_2_with_one_line(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.setenv("SCALING_COMPILE_CACHE", "off")
    data_path("tinyshakespeare", "input.txt")
    p = tmp_path / "spec.yaml"
    p.write_text(BASE + GRID + text + "\n")
    with pytest.raises(SystemExit) as e:
        sweep_cli.main(["--config", str(p), "--out", str(tmp_path / "out"), "--dry-run", "--no-calibration"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ shards and the end to end sweep


def _fake_finish(scan_out: Path, r, loss: float) -> None:
    d = scan_out / "runs" / r.run_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(r.cfg.to_yaml())
    (d / "plan.json").write_text(json.dumps(r.to_json()))
    (d / "summary.json").write_text(json.dumps({"status": "completed", "val_loss": loss, "n_params": r.n_params}))


def test_a_finished_shard_waits_for_the_other_shards_scan_runs(tmp_path):
    spec = spec_of(tmp_path, GRID + "lr_scan: {lrs: [1e-3, 2e-3, 4e-3], flops: 1e9}\n")
    scan = pilot.plan_scan(spec, {}, sweep.make_plan(spec, {}, load_data=False), load_data=False)
    scan_out = tmp_path / "out" / "lr_scan"
    loss = {1e-3: 3.0, 2e-3: 2.8, 4e-3: 2.9}
    mine, theirs = scan.shard(0, 2), scan.shard(1, 2)
    for r in mine:
        _fake_finish(scan_out, r, loss[r.cfg.optim.lr])
    said: list[str] = []
    timer = threading.Timer(0.3, lambda: [_fake_finish(scan_out, r, loss[r.cfg.optim.lr]) for r in theirs])
    timer.start()
    rule = pilot._wait_for_scan(spec, scan, scan_out, said.append, poll_s=0.05)
    timer.join()
    # the first line names every run of the other shard; a poll between the timer's writes may
    # add a line for the runs still missing, never naming this shard's runs
    assert said and f"waiting for {len(theirs)} scan run(s)" in said[0]
    assert all(r.run_id in said[0] for r in theirs)
    assert all("waiting for" in line and not any(r.run_id in line for r in mine) for line in said)
    assert [o.in_range for o in rule.optima] == [True, True] and rule.gamma == pytest.approx(0, abs=1e-9)


@pytest.mark.slow  # six compiles (a compiled step per shape and rate)
def test_tiny_sweep_with_a_scan_writes_the_scan_the_rule_and_main_runs_with_fitted_lrs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCALING_COMPILE_CACHE", "off")
    data_path("tinyshakespeare", "input.txt")
    p = tmp_path / "spec.yaml"
    p.write_text(
        BASE + "grid: {models: [{n_layer: 1, d_model: 16}, {n_layer: 1, d_model: 32}], tokens: [1024]}\n"
        "fit: false\nlr_scan: {lrs: [3e-3, 3e-2], flops: 3e8}\nper_size: {init_scale: 1}\n"
    )
    out = tmp_path / "out"
    res = sweep_cli.main(["--config", str(p), "--out", str(out)])
    text = capsys.readouterr().out
    with open(out / "lr_scan" / "results.csv") as f:
        scan_rows = list(csv.DictReader(f))
    assert len(scan_rows) == 4 and {r["status"] for r in scan_rows} == {"completed"}
    assert {r["arm"] for r in scan_rows} == {"lr0.003", "lr0.03"}
    assert json.loads((out / "lr_scan" / "plan.json").read_text())["name"] == "spec.lr_scan"
    rule = sweep.read_rule(out)
    assert rule is not None and len(rule.optima) == 2 and not any(o.in_range for o in rule.optima)  # 2 rates
    assert "WARNING: the best learning rate of" in text
    for o in rule.optima:  # the optimum is the better of the two rates
        best = min(zip(o.losses, o.lrs))[1]
        assert o.lr_opt == best
    applied = {a.shape: a.lr for a in rule.applied}
    assert len(res.trained) == 2 and len(applied) == 2
    for rid in res.trained:  # each main run trained with the rule's lr at its size
        run = json.loads((out / "runs" / rid / "plan.json").read_text())
        cfg = read_config(out / "runs" / rid)
        assert cfg.optim.lr == rule.lr(run["n_params"]) == applied[f"L1-d{run['d_model']}-h{run['n_head']}"]

    # a rerun after a kill between the fit and the main runs: the scan is kept, the rule refitted identically
    (out / "lr_rule.json").unlink()
    res = sweep_cli.main(["--config", str(p), "--out", str(out)])
    assert res.trained == [] and len(res.skipped) == 2 and sweep.read_rule(out) == rule
    assert [e["event"] for e in sweep.read_log(out / "lr_scan")].count("start") == 4  # no scan run again


def test_a_scanned_size_warms_up_as_its_main_runs_do(tmp_path):
    """The scan's runs are shorter than the main runs; each still gets its size's main warmup
    (the rate is scanned under the schedule the main runs will have)."""
    spec = spec_of(
        tmp_path,
        GRID.replace("[2048, 4096]", "[20480, 81920]")
        + "per_size: {warmup_tokens_per_param: 0.1}\nlr_scan: {lrs: [1e-3, 1e-2], flops: 1e8}\n",
    )
    main = sweep.make_plan(spec, {}, load_data=False)
    scan = pilot.plan_scan(spec, {}, main, load_data=False)
    want = {r.cfg.model.d_model: r.cfg.optim.warmup_steps for r in main.runs}
    assert {r.cfg.model.d_model: r.cfg.optim.warmup_steps for r in scan.runs} == want
    assert min(r.steps for r in scan.runs) < min(r.steps for r in main.runs)  # the scan's own cap would differ
    for r in main.runs:
        assert f"{hparams.shape_of(r.cfg)} {r.cfg.optim.warmup_steps}" in sweep.format_plan(scan)


def test_the_scan_runs_every_scanned_size_whatever_the_main_designs_tokens_per_parameter_band(tmp_path):
    """isoflop.max_tokens_per_param leaves data-rich points out of the main design; the scan's
    runs (one budget for every scanned size) are planned all the same."""
    iso = (
        "isoflop: {budgets: [2e10, 4e10], models: [{n_layer: 1, d_model: 16}, {n_layer: 2, d_model: 32}],\n"
        "          max_tokens_per_param: 60}\nfit: false\nlr_scan: {lrs: [1e-3, 1e-2], flops: 4e10}\n"
    )
    spec = spec_of(tmp_path, iso)
    main = sweep.make_plan(spec, {}, load_data=False)
    assert main.dropped and all(r.tokens <= 60 * r.n_params for r in main.runs)
    scan = pilot.plan_scan(spec, {}, main, load_data=False)
    assert len(scan.runs) == 4 and max(r.tokens / r.n_params for r in scan.runs) > 60
