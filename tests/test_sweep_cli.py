"""experiments.sweep's command line: the dry run (no compile; a cached or rough estimate), the
spec values given as flags (--isoflop.budgets, --seeds, ...) and their parsers, and the lean
main path (no optional package loaded)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import sweep as sweep_cli
from scaling import sweep
from scaling.config import Config
from scaling.errors import UsageError
from scaling.sweep.calibrate import ROUGH, calibrated_runs
from scaling.sweep.parse import SPEC_FLAGS, parse_flag, parse_items, parse_model_item, parse_seeds
from scaling.sweep.show import format_duration
from scaling.sweep.spec import SPEC_KEYS
from tests.helpers import REPO, data_path

SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"
OPTIONAL = ("torch", "transformers", "datasets", "safetensors", "nbformat", "nbclient", "tensorboard", "wandb")
"""Packages of the extras (hf, tracking, test): the main job loads none of them."""


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """In-process CLI calls: JAX's persistent compilation cache off (global JAX state) and a
    private cache directory (calibrations)."""
    monkeypatch.setenv("SCALING_COMPILE_CACHE", "off")
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    data_path("tinyshakespeare", "input.txt")
    return tmp_path


def _est_column(text: str) -> dict[str, str]:
    """run_id -> the printed est.wall of each plan line."""
    return {m[1]: m[2] for m in re.finditer(r"^\s*\d+ (\S+) .* (\S+)$", text, re.M) if "-D" in m[1]}


# ----------------------------------------------------------------------------- the dry run


def test_the_main_path_loads_no_optional_package_and_a_dry_run_compiles_nothing(tmp_path):
    """One subprocess: the main entry points import without the extras' packages, and a dry run
    prints the plan with an estimate labelled uncalibrated, compiling nothing (JAX logs every
    compile) and writing nothing."""
    data_path("tinyshakespeare", "input.txt")
    code = (
        "import sys, json\n"
        "import experiments.sweep, experiments.train, experiments.generate, experiments.evaluate\n"
        "import analysis.fit, analysis.sweep_plots, scaling.sweep, scaling.train, scaling.data, scaling.inference\n"
        f"experiments.sweep.main(['--config', {str(SMOKE)!r}, '--out', {str(tmp_path / 'out')!r}, '--dry-run'])\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r})))\n"
    )
    env = {**os.environ, "SCALING_CACHE_DIR": str(tmp_path / "cache"), "JAX_LOG_COMPILES": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert "Compiling" not in proc.stderr
    assert "estimates UNCALIBRATED" in proc.stdout and "(uncalibrated)" in proc.stdout
    assert "total: 6 runs" in proc.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "sweep-calibration").exists()


def test_a_dry_run_estimates_from_flops_then_from_a_stored_calibration(cli_env, capsys):
    out = cli_env / "out"
    args = ["--config", str(SMOKE), "--out", str(out), "--dry-run", "--jobs", "1"]
    plan = sweep_cli.main(args)
    text = capsys.readouterr().out
    rough = sweep.rough_calibration(plan.runs, "cpu")
    assert "estimates UNCALIBRATED" in text and "(uncalibrated)" in text
    for p, r in zip(rough.points, calibrated_runs(plan.runs)):  # the smallest and the largest shape
        rate, overhead, compile_s = ROUGH["cpu"]
        assert p["step_s"] == pytest.approx(overhead + r.flops_per_step / rate) and p["compile_s"] == compile_s
    printed = _est_column(text)
    assert set(printed) == {r.run_id for r in plan.runs}
    for rid, s in rough.estimate_runs(plan.runs).items():
        assert printed[rid] == format_duration(s)

    # a calibration of these shapes on this machine (as --calibrate stores it): the next dry run uses it
    timed = [
        {"run_id": p["run_id"], "flops_per_step": p["flops_per_step"], "step_s": 0.5, "eval_s": 0.1}
        | {"compile_s": 7.0, "ckpt_s": 0.25}
        for p in rough.points
    ]
    calib = sweep.Calibration(points=tuple(timed))
    assert sweep.store_calibration(plan.runs, calib) is not None
    sweep_cli.main(args)
    text = capsys.readouterr().out
    assert "earlier --calibrate on this machine" in text and "uncalibrated" not in text.lower()
    printed = _est_column(text)
    seen = set()
    for r in plan.runs:  # compile once per shape, then steps at 0.5 s, evaluations, checkpoints
        c = r.cfg
        n_eval = r.steps // c.train.eval_every + (1 if r.steps % c.train.eval_every else 0)
        n_ckpt = r.steps // c.checkpoint.every_steps + (1 if r.steps % c.checkpoint.every_steps else 0)
        want = 7.0 * (r.shape not in seen) + 0.5 * r.steps + 0.1 * n_eval * c.train.eval_batches + 0.25 * n_ckpt
        assert printed[r.run_id] == format_duration(want + calib.fixed_s), r.run_id
        seen.add(r.shape)
    assert not out.exists()


def test_another_machine_or_shape_does_not_reuse_a_calibration(cli_env):
    plan = sweep.make_plan(sweep.load_spec(SMOKE), {})
    calib = sweep.rough_calibration(plan.runs, "cpu")
    sweep.store_calibration(plan.runs, dataclasses.replace(calib, source="calibrated"))
    assert sweep.cached_calibration(plan.runs).source == "cached"
    assert sweep.cached_calibration(plan.runs, xla_flags="--xla_cpu_multi_thread_eigen=false") is None
    other = sweep.make_plan(
        sweep.load_spec(SMOKE, *_flags("--isoflop.models", "L1-d16,L2-d32", "--fit.enabled", "false")), {}
    )
    assert sweep.cached_calibration(other.runs) is None  # the largest shape differs
    budgets = sweep.make_plan(sweep.load_spec(SMOKE, *_flags("--isoflop.budgets", "1e10,2e10")), {})
    assert sweep.cached_calibration(budgets.runs) is not None  # the same shapes, other step counts


@pytest.mark.slow
def test_calibrate_times_real_steps_and_a_later_dry_run_reuses_them(cli_env, capsys):
    spec = cli_env / "spec.yaml"
    spec.write_text(SMOKE.read_text().replace("checkpoint: {every_steps: 100, keep: 2}", "checkpoint: {keep: 1}"))
    args = ["--config", str(spec), "--out", str(cli_env / "out"), "--dry-run", "--jobs", "1"]
    args += ["--isoflop.models", "L1-d16,L2-d32,L3-d48", "--fit.enabled", "false"]
    sweep_cli.main(args + ["--calibrate"])
    first = capsys.readouterr().out
    assert "calibration on this machine (L1-d16-h1: " in first and "L3-d48-h3: " in first
    sweep_cli.main(args)
    second = capsys.readouterr().out
    assert "earlier --calibrate on this machine (L1-d16-h1: " in second
    assert _est_column(first) == _est_column(second)
    assert not (cli_env / "out").exists()


def test_calibrate_goes_with_dry_run(cli_env, capsys):
    with pytest.raises(SystemExit) as e:
        sweep_cli.main(["--config", str(SMOKE), "--out", str(cli_env / "out"), "--calibrate"])
    assert e.value.code == 2 and "--calibrate goes with --dry-run" in capsys.readouterr().err
    assert not (cli_env / "out").exists()


# ----------------------------------------------------------------------------- spec values as flags


def _flags(*argv: str) -> tuple[dict, str]:
    return sweep_cli.spec_flags(sweep_cli.parser().parse_args(list(argv)))


def _plan(cli_env, capsys, *argv: str):
    plan = sweep_cli.main(["--config", str(SMOKE), "--out", str(cli_env / "out"), "--dry-run", "--jobs", "1", *argv])
    return plan, capsys.readouterr().out


def test_flags_give_the_plan_of_the_same_values_in_a_spec_file(cli_env, capsys):
    argv = ["--isoflop.budgets", "1e10, 2e10", "--isoflop.models", "L1-d16,L2-d32-h4,100K", "--seeds", "0,1"]
    plan, text = _plan(cli_env, capsys, *argv)
    header = text.splitlines()[0]
    assert all(f"{a} {b}" in header for a, b in zip(argv[::2], argv[1::2])), header
    spec = cli_env / "same.yaml"
    spec.write_text(
        SMOKE.read_text()
        .replace("budgets: [5e9, 1e10]", "budgets: [1e10, 2e10]")
        .replace(
            "models: [1e4, 4e4, 1e5]", "models: [{n_layer: 1, d_model: 16}, {n_layer: 2, d_model: 32, n_head: 4}, 100K]"
        )
        .replace("seeds: [0]", "seeds: [0, 1]")
    )
    same = sweep.make_plan(sweep.load_spec(spec), {})
    assert [r.run_id for r in plan.runs] == [r.run_id for r in same.runs]
    assert [r.cfg for r in plan.runs] == [r.cfg for r in same.runs]
    assert {r.budget for r in plan.runs} == {1e10, 2e10} and {r.seed for r in plan.runs} == {0, 1}
    assert {(r.cfg.model.n_layer, r.cfg.model.d_model, r.cfg.model.n_head) for r in plan.runs} >= {
        (1, 16, 1),
        (2, 32, 4),
    }
    assert len(plan.runs) == 2 * 3 * 2


def test_a_grid_or_a_fixed_lr_rule_from_flags_replaces_the_other_section(cli_env, capsys):
    plan, text = _plan(
        cli_env, capsys, "--grid.models", "L1-d16,L2-d32", "--grid.tokens", "2e4,4e4", "--fit.enabled", "false"
    )
    assert plan.spec.design == "grid" and "grid of 2 models x 2 token budgets" in text
    assert sorted(r.tokens for r in plan.runs) == sorted(
        [round(2e4 / 256) * 256] * 2 + [round(4e4 / 256) * 256] * 2
    )  # whole batches
    spec = sweep.load_spec(
        REPO / "experiments" / "configs" / "default.yaml",
        *_flags("--lr_rule.c", "4e-3", "--lr_rule.gamma", "0.3", "--lr_rule.n_ref", "1e5"),
    )
    assert spec.lr_scan is None and spec.lr_rule == sweep.spec.LrRuleSpec(4e-3, 0.3, 1e5)
    spec = sweep.load_spec(
        REPO / "experiments" / "configs" / "default.yaml", *_flags("--lr_scan.models", "3", "--noise.seeds", "5,6")
    )
    assert spec.lr_scan.n_models == 3 and spec.noise.seeds == (5, 6) and spec.noise.models == 2
    band = sweep.load_spec(
        REPO / "experiments" / "configs" / "default.yaml", *_flags("--isoflop.max_tokens_per_param", "64")
    )
    assert (band.min_tokens_per_param, band.max_tokens_per_param) == (4, 64)
    unbounded = sweep.load_spec(
        REPO / "experiments" / "configs" / "default.yaml", *_flags("--isoflop.max_tokens_per_param", "0")
    )
    assert unbounded.max_tokens_per_param == 0  # no upper limit


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--isoflop.budgets", "1e10,,2e10"], "--isoflop.budgets: expected a comma-separated list without empty items"),
        (["--isoflop.budgets", "1e10,lots"], "isoflop.budgets[1]: expected a number, got 'lots'"),
        (["--isoflop.max_tokens_per_param", "-1"], "isoflop.max_tokens_per_param must be 0 (no bound) or positive"),
        (["--isoflop.models", "L2-dx"], "--isoflop.models: expected a model as L<n_layer>-d<d_model>"),
        (["--seeds", "0,-1"], "--seeds: expected non-negative whole numbers"),
        (["--seeds", "1,1"], "with --seeds 1,1: seeds has a repeated seed"),
        (["--grid.tokens", "1e6"], "grid needs models and tokens"),
        (["--fit.enabled", "maybe"], "--fit.enabled: expected true or false"),
        (["--lr_rule.c", "1e-3", "--lr_scan.lrs", "1e-3,2e-3"], "exclude each other"),
        (
            ["--isoflop.budget", "1e10"],
            "unrecognized arguments: --isoflop.budget 1e10 (did you mean '--isoflop.budgets'?)",
        ),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag (see python -m experiments.sweep --help)"),
        (["--sizing.count", "some"], "sizing.count must be total or nonembed"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line_and_write_nothing(cli_env, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        sweep_cli.main(["--config", str(SMOKE), "--out", str(cli_env / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (cli_env / "out").exists()


def test_spec_sections_are_not_config_sections():
    config_sections = {f.name for f in dataclasses.fields(Config)}
    assert not set(SPEC_FLAGS) & config_sections and "seeds" not in config_sections
    assert set(SPEC_FLAGS) <= SPEC_KEYS


# ----------------------------------------------------------------------------- the list parsers

item = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1)


@settings(max_examples=40, deadline=None)
@given(st.lists(item, min_size=1))
def test_a_comma_separated_list_splits_into_its_items(items):
    assert parse_items(",".join(items), "f") == [t.strip() for t in items]
    assert parse_items(" , ".join(items), "f") == [t.strip() for t in items]


@settings(max_examples=40, deadline=None)
@given(st.lists(item, min_size=1), st.integers(0, 5))
def test_an_empty_item_is_refused(items, at):
    items.insert(min(at, len(items)), " ")
    with pytest.raises(UsageError, match="without empty items"):
        parse_items(",".join(items), "f")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1))
def test_seeds_round_trip(seeds):
    assert parse_seeds(",".join(map(str, seeds)), "seeds") == seeds


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-6, 1e20), min_size=1))
def test_numbers_round_trip_through_the_spec_check(xs):
    texts = parse_flag("isoflop.budgets", ",".join(map(repr, xs)))
    assert [sweep.parse_number(t, "w") for t in texts] == xs


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 999), st.integers(1, 9999), st.none() | st.integers(1, 99))
def test_a_shape_reads_as_its_numbers(n_layer, d_model, n_head):
    text = f"L{n_layer}-d{d_model}" + ("" if n_head is None else f"-h{n_head}")
    want = {"n_layer": n_layer, "d_model": d_model} | ({} if n_head is None else {"n_head": n_head})
    assert parse_model_item(text, "grid.models") == want
    assert parse_flag("lr_scan.models", text) == [want]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["1e5", "100K", "1.5M", "2"]))
def test_a_count_is_left_to_the_spec_check(text):
    assert parse_flag("grid.models", text) == [text]
    assert parse_flag("lr_scan.models", text) == text  # one count: a number of scanned sizes


def test_a_dry_run_with_more_workers_than_a_plan_has_families_estimates_every_run(cli_env, capsys):
    plan = sweep_cli.main(
        ["--config", str(SMOKE), "--out", str(cli_env / "out"), "--dry-run", "--jobs", "8"]
        + ["--lr_scan.lrs", "1e-3,2e-3", "--lr_scan.flops", "5e9"]
    )
    text = capsys.readouterr().out
    printed = _est_column(text)
    assert len(printed) == len(plan.runs) + 4 and "with 8 workers (uncalibrated)" in text  # 2 sizes x 2 rates


def test_a_sweep_changed_by_flags_has_its_own_default_directory():
    plain = sweep_cli._default_out(sweep.load_spec(SMOKE))
    variant = sweep_cli._default_out(sweep.load_spec(SMOKE, *_flags("--seeds", "0,1")))
    again = sweep_cli._default_out(sweep.load_spec(SMOKE, *_flags("--seeds", "0,1")))
    other = sweep_cli._default_out(sweep.load_spec(SMOKE, *_flags("--seeds", "0,2")))
    assert str(plain) == "runs/sweep-smoke" and variant == again  # a rerun resumes the variant
    assert re.fullmatch(r"sweep-smoke-[0-9a-f]{8}", variant.name) and len({plain, variant, other}) == 3


def test_the_backend_probe_says_cpu_here_and_ends_with_its_block():
    with sweep_cli.BackendProbe(True) as probe:
        assert probe.is_cpu()  # the test session's JAX runs on the CPU
    with sweep_cli.BackendProbe(True) as probe:
        child = probe.proc  # left unasked: leaving the block ends it
    assert child.poll() is not None
    with sweep_cli.BackendProbe(False) as probe, pytest.raises(RuntimeError, match="not started"):
        probe.is_cpu()


@pytest.mark.parametrize("spec, workers", [("smoke.yaml", False), ("bench-smoke.yaml", True)])
def test_jobs_auto_trains_a_short_plan_in_one_process_and_a_long_one_in_workers(
    cli_env, capsys, monkeypatch, spec, workers
):
    monkeypatch.setattr(sweep_cli, "usable_cpus", lambda: 4)
    plan = sweep_cli.main(
        ["--config", str(REPO / "experiments" / "configs" / spec), "--out", str(cli_env / "out"), "--dry-run"]
    )
    out, err = capsys.readouterr()
    payoff = sweep.worker_payoff(plan.runs, "cpu")
    assert payoff.source == "rough" and payoff.shapes == len({_shape(r) for r in plan.runs})
    # the rough estimate's compile seconds per shape, and the plan's training at its FLOP rate at least
    assert payoff.compile_s == pytest.approx(ROUGH["cpu"][2] * payoff.shapes)
    assert payoff.training_s > sum(r.flops_per_step * r.train_steps for r in plan.runs) / ROUGH["cpu"][0]
    assert payoff.pays_off == workers == ("with 4 workers" in out)
    assert ("--jobs auto: training in this process" in err) == (not workers)


def _shape(r) -> tuple:
    return (r.cfg.model.n_layer, r.cfg.model.d_model, r.cfg.model.n_head)
