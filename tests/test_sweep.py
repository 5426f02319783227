"""Sweeps: the spec, the sizing rule and the plan (by hand), the results table, bad input, and
the smoke sweep end to end: SIGKILLed three times and resumed equals an unbroken sweep; two
shards at once train every run exactly once."""

from __future__ import annotations

import collections
import csv
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import sweep as sweep_cli
from scaling import io as run_io
from scaling import sweep
from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.laws.approach1 import fit_approach1_endpoints
from scaling.laws.support import SWEEP
from scaling.train import loop
from tests.helpers import REPO, data_path

SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"
execute_mod = importlib.import_module("scaling.sweep.execute")  # (scaling.sweep.execute names the function)
QUIET = ["--train.progress", "false", "--jobs", "1"]
"""Quiet, in one process (the reference sweep trains in two worker processes: --jobs 2)."""


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32}
  train: {batch_size: 8}
"""


def hand_count(n_layer: int, d: int, seq_len: int, padded_vocab: int) -> int:
    """GPT-2 block by hand: attention 4d^2+4d, MLP 8d^2+5d, two LayerNorms 4d; final norm 2d;
    tied token embedding (padded vocabulary) and learned positions."""
    return n_layer * (12 * d * d + 13 * d) + 2 * d + (padded_vocab + seq_len) * d


# ------------------------------------------------------------------ spec and sizing


def test_numbers_in_specs():
    assert sweep.parse_number("100K", "x") == 1e5
    assert sweep.parse_number("1.5M", "x") == 1.5e6
    assert sweep.parse_number("1e12", "x") == 1e12  # YAML reads 1e12 as a string
    assert sweep.parse_number(3e4, "x") == 3e4
    for bad in ("abc", -1, 0, True, [1]):
        with pytest.raises(UsageError):
            sweep.parse_number(bad, "x")


@pytest.mark.parametrize("target", [1e4, 3e4, 1e5, 3e5, 1e6, 5e6])
def test_sizing_rule_picks_the_depth_closest_to_the_target(target):
    model = ModelConfig(seq_len=128, vocab_size=257)
    rule = sweep.Sizing(aspect=16, head_dim=16)
    n_layer, d_model, n_head = sweep.shape_for(target, rule, model)
    # the rule by hand: d = 16 * max(1, round(16 L / 16)) = 16 L, n_head = d / 16
    cands = {L: hand_count(L, 16 * L, 128, 320) for L in range(1, 65)}
    best = min(cands, key=lambda L: abs(math.log(cands[L] / target)))
    assert (n_layer, d_model, n_head) == (best, 16 * best, best)


def test_sizing_rule_rounds_width_to_whole_heads_and_can_match_nonembedding_counts():
    model = ModelConfig(seq_len=64, vocab_size=257)
    rule = sweep.Sizing(aspect=40, head_dim=32, count="nonembed")
    n_layer, d_model, n_head = sweep.shape_for(2e6, rule, model)
    assert d_model % 32 == 0 and n_head == d_model // 32
    assert d_model == 32 * max(1, round(40 * n_layer / 32))
    nonembed = {
        L: hand_count(L, 32 * max(1, round(40 * L / 32)), 64, 320) - (320 + 64) * 32 * max(1, round(40 * L / 32))
        for L in range(1, 65)
    }
    assert n_layer == min(nonembed, key=lambda L: abs(math.log(nonembed[L] / 2e6)))


def test_isoflop_plan_by_hand(tmp_path):
    spec = sweep.load_spec(
        write_spec(
            tmp_path,
            BASE
            + """
sizing: {aspect: 16, head_dim: 16}
isoflop:
  budgets: [5e9, {flops: 1e10, models: [{n_layer: 2, d_model: 32}, 1e5, 3e5, 1e6]}]
  models: [1e4, "40K", 1e5]
  min_steps: 20
seeds: [0, 3]
""",
        )
    )
    plan = sweep.make_plan(spec, {})
    per_step = 8 * 32
    ids = [r.run_id for r in plan.runs]
    assert len(set(ids)) == len(ids)
    # L7-d112 (1.1M) at 1e10 would have 6 steps, fewer than 20: left out
    assert any("min_steps" in d for d in plan.dropped)
    for r in plan.runs:
        m = r.cfg.model
        n = hand_count(m.n_layer, m.d_model, 32, 320)
        assert r.n_params == n
        assert r.tokens % per_step == 0 and r.tokens == r.steps * per_step
        # D = C / (6N) rounded to whole batches: within half a batch of the exact value
        assert abs(r.tokens - r.budget / (6 * n)) <= per_step / 2
        assert r.flops["6nd"] == 6 * n * r.tokens
        assert r.steps >= 20
        assert r.run_id == f"L{m.n_layer}-d{m.d_model}-D{sweep.format_tokens(r.tokens)}-s{r.seed}"
        assert r.cfg.train.seed == r.seed and r.cfg.train.tokens == r.tokens
    assert {r.seed for r in plan.runs} == {0, 3}
    assert [r.index for r in plan.runs] == list(range(len(plan.runs)))
    assert plan.runs[0].run_id == "L1-d16-D9.3e4-s0"  # 5e9 / (6 * 8944) = 93,166 -> 364 batches of 256
    assert "3" in plan.approaches and "2" in plan.approaches


def test_grid_with_arms_seeds_and_tags(tmp_path):
    spec = sweep.load_spec(
        write_spec(
            tmp_path,
            BASE
            + """
grid:
  models: [{n_layer: 1, d_model: 32, n_head: 4}, {n_layer: 2, d_model: 32}]
  tokens: [2048, 5000]
seeds: [1]
arms:
  - name: base
  - name: lin
    config: {data: {curriculum: linear}}
    tags: {pacing: linear}
tags: {project: demo}
fit: false
""",
        )
    )
    plan = sweep.make_plan(spec, {"optim": {"lr": "0.003"}})
    assert len(plan.runs) == 2 * 2 * 2
    assert {r.tokens for r in plan.runs} == {2048, 5120}  # 5000 -> nearest whole batch of 256
    r0 = plan.runs[0]
    assert r0.run_id == "L1-d32-h4-D2.0e3-s1-base"  # n_head 4 is not the sizing default 32/16 = 2
    assert all(r.cfg.optim.lr == 0.003 for r in plan.runs)
    lin = [r for r in plan.runs if r.arm == "lin"]
    assert all(r.cfg.data.curriculum == "linear" and r.tags == {"project": "demo", "pacing": "linear"} for r in lin)
    assert all(r.cfg.data.curriculum == "" and r.run_id.endswith("-base") for r in plan.runs if r.arm == "base")
    assert all(r.budget is None for r in plan.runs)
    assert sweep.parse_shard("1/3") == (1, 3)
    assert [r.index for r in plan.shard(1, 3)] == [1, 4, 7]


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid: {models: [1e4], tokens: [1e4]}\nisoflop: {budgets: [1e9], models: [1e4]}", "exactly one design"),
        ("colour: red\ngrid: {models: [1e4], tokens: [1e4]}", "unknown key 'colour'"),
        ("grid: {models: [{n_layer: 2}], tokens: [1e4]}", "needs n_layer and d_model"),
        ("grid: {models: [abc], tokens: [1e4]}", "expected a number"),
        ("grid: {models: [1e4, 1.1e4], tokens: [1e4, 2e4, 3e4]}", "give the same run"),
        ("grid: {models: [1e4, 4e4, 1e5], tokens: [1e1]}", "less than one batch"),
        ("isoflop: {budgets: [1e9, 1e9], models: [1e4]}", "repeated budget"),
        ("isoflop: {budgets: [1e9]}", "has no models"),
        ("grid: {models: [1e4], tokens: [1e4]}", "too few runs to fit"),
        ("grid: {models: [1e4, 4e4], tokens: [1e4, 2e4]}", "too few runs to fit"),  # approach 1 needs 3 sizes
        ("grid: {models: [{n_layer: 2, d_model: 30}], tokens: [1e4]}\nfit: false", "multiple of sizing.head_dim"),
        ("grid: {models: [{n_layer: 2, d_model: 30, n_head: 4}], tokens: [1e4]}\nfit: false", "divisible"),
        ("grid: {models: [1e4, 4e4], tokens: [1e4, 2e4]}\narms: [{name: a-b}]", "plain word"),
    ],
)
def test_bad_specs_are_usage_errors(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        sweep.make_plan(sweep.load_spec(write_spec(tmp_path, BASE + text)), {})


def test_the_plan_supports_approach_1_by_the_rule_the_fit_applies():
    """Approach 1 runs on annealed endpoints: 3+ sizes with 2+ distinct C each, in the plan and the fit."""
    N = [1e4, 1e4, 4e4, 4e4, 1e5]
    C = [1e9, 2e9, 1e9, 2e9, 1e9]
    why = SWEEP.approach1(N, C)
    assert why is not None and "found 2" in why
    with pytest.raises(UsageError) as e:
        fit_approach1_endpoints(N, C, [3.0, 2.9, 2.8, 2.7, 2.6])
    assert str(e.value) == why
    assert SWEEP.approach1(N + [1e5], C + [2e9]) is None


def test_design_fields_cannot_be_overridden(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path, BASE + "grid: {models: [1e4, 4e4], tokens: [1e4, 2e4]}\nseeds: [0]\n"))
    for sec, name in (("model", "d_model"), ("train", "tokens"), ("train", "seed")):
        with pytest.raises(UsageError, match=f"--{sec}.{name} is set by the sweep design"):
            sweep.make_plan(spec, {sec: {name: "64"}})


# ------------------------------------------------------------------ the CLI on bad input


def _cli_exit(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        sweep_cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    good = write_spec(tmp_path, BASE + "grid: {models: [1e4, 4e4], tokens: [2048, 4096]}\nseeds: [0]\nfit: false\n")
    # a run directory trained with another config, and a results table
    run = out / "runs" / "L1-d16-D2.0e3-s0"
    run.mkdir(parents=True)
    plan = sweep.make_plan(sweep.load_spec(good), {"optim": {"lr": "0.01"}})
    (run / "config.yaml").write_text(plan.runs[0].cfg.to_yaml())
    (out / "results.csv").write_text("precious\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad_mesh = ["--config", str(good), "--out", str(out), "--mesh.data", "3"]
    assert "config file not found" in _cli_exit(["--config", str(tmp_path / "missing.yaml"), "--out", str(out)], capsys)
    assert "mesh" in _cli_exit(bad_mesh, capsys)
    assert "--shard" in _cli_exit(["--config", str(good), "--out", str(out), "--shard", "2/2"], capsys)
    assert "train.batch_size" in _cli_exit(
        ["--config", str(good), "--out", str(out), "--train.batch_size", "0"], capsys
    )
    assert "corpus not found" in _cli_exit(
        ["--config", str(good), "--out", str(out), "--data.corpus", str(tmp_path / "nope.txt")], capsys
    )
    assert "set by the sweep design" in _cli_exit(
        ["--config", str(good), "--out", str(out), "--model.n_layer", "3"], capsys
    )
    msg = _cli_exit(["--config", str(good), "--out", str(out)], capsys)
    assert "different config" in msg and "optim.lr" in msg
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    plan = sweep_cli.main(["--config", str(SMOKE), "--out", str(out), "--dry-run"])
    text = capsys.readouterr().out
    for r in plan.runs:
        assert r.run_id in text and f"{r.n_params:,}" in text and f"{r.tokens:,}" in text
    assert f"total: {len(plan.runs)} runs" in text
    assert not out.exists()


def test_calibration_estimates_every_run(tmp_path):
    spec = write_spec(
        tmp_path,
        BASE + "grid: {models: [{n_layer: 1, d_model: 16}, {n_layer: 1, d_model: 32}], "
        "tokens: [2048, 20480]}\nfit: false\n",
    )
    plan = sweep.make_plan(sweep.load_spec(spec), {})
    calib = sweep.calibrate(plan.runs, target_s=0.2, max_steps=5)
    assert [p["run_id"].split("-D")[0] for p in calib.points] == ["L1-d16", "L1-d32"]  # smallest, largest
    assert all(p["step_s"] > 0 and p["compile_s"] > 0 and p["ckpt_s"] > 0 for p in calib.points)
    est = {r.run_id: calib.estimate(r) for r in plan.runs}
    for r in plan.runs:
        p = next(p for p in calib.points if p["flops_per_step"] == r.flops_per_step)  # calibrated shapes
        assert est[r.run_id] >= p["compile_s"] + r.steps * p["step_s"]
    assert est["L1-d16-D2.0e4-s0"] > est["L1-d16-D2.0e3-s0"]
    assert "ms/step" in calib.describe()


def test_diverged_runs_are_kept_unless_retried_from_their_last_good_checkpoint(tmp_path, capsys):
    spec = write_spec(tmp_path, BASE + "grid: {models: [1e4], tokens: [1536]}\nfit: false\n")
    out = tmp_path / "sweep"
    rid = "L1-d16-D1.5e3-s0"
    args = ["--config", str(spec), "--out", str(out), *QUIET, "--checkpoint.every_steps", "2"]
    res = sweep_cli.main(args + ["--debug.inject_nan_step", "3"])
    assert res.trained == [rid] and [r["status"] for r in res.rows] == ["diverged"]
    res = sweep_cli.main(args)  # kept as diverged, not retried
    assert res.trained == [] and res.skipped == [rid] and [r["status"] for r in res.rows] == ["diverged"]
    res = sweep_cli.main(args + ["--retry-diverged"])  # inject_nan_step is safe to change on resume
    assert res.trained == [rid] and [r["status"] for r in res.rows] == ["completed"]
    starts = [e for e in sweep.read_log(out) if e["event"] == "start"]
    assert [e["start_step"] for e in starts] == [0, 2]  # resumed at the last good checkpoint
    assert json.loads((out / "runs" / rid / "summary.diverged.json").read_text())["status"] == "diverged"
    steps = [json.loads(x)["step"] for x in (out / "runs" / rid / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert not (out / "fit.json").exists()  # fit: false


def test_a_sweep_reads_its_corpus_once_for_all_its_runs(tmp_path, monkeypatch):
    loads = collections.Counter()

    def counting(where, real):
        def load(data):
            loads[where] += 1
            return real(data)

        return load

    monkeypatch.setattr(execute_mod, "load_tokens", counting("sweep", execute_mod.load_tokens))
    monkeypatch.setattr(loop, "load_tokens", counting("run", loop.load_tokens))
    spec = write_spec(tmp_path, BASE + "grid: {models: [1e4], tokens: [1024, 1536, 2048]}\nfit: false\n")
    res = sweep_cli.main(["--config", str(spec), "--out", str(tmp_path / "sweep"), *QUIET])
    assert len(res.trained) == 3 and [r["status"] for r in res.rows] == ["completed"] * 3
    assert loads == {"sweep": 1}  # not once per run


# ------------------------------------------------------------------ the results table


def _fake_run(out: Path, run_id: str, index: int, status="completed", arm=None, loss=3.0, summary=True):
    d = out / "runs" / run_id
    d.mkdir(parents=True)
    (d / "plan.json").write_text(
        json.dumps(
            {
                "index": index,
                "run_id": run_id,
                "budget": 1e9,
                "seed": 0,
                "arm": arm,
                "target_n": None,
                "tags": {"pacing": "x"} if arm else {},
            }
        )
    )
    if summary:
        (d / "summary.json").write_text(
            json.dumps(
                {
                    "n_params": 1000 * (index + 1),
                    "n_params_nonembed": 900,
                    "tokens": 4096,
                    "steps": 16,
                    "flops_6nd": 6.0 * 1000 * (index + 1) * 4096,
                    "flops_kaplan": 1.0,
                    "flops_chinchilla": 2.0,
                    "flops_xla": 3.0,
                    "final_train_loss": loss + 0.1,
                    "val_loss": loss,
                    "val_bpb": loss / math.log(2),
                    "status": status,
                    "wall_s": 1.5,
                    "n_layer": 1,
                    "d_model": 16,
                    "n_head": 1,
                    "seq_len": 32,
                }
            )
        )


def test_results_table_is_rebuilt_from_every_summary(tmp_path):
    out = tmp_path / "sweep"
    _fake_run(out, "b", 1, arm="x", loss=2.5)
    _fake_run(out, "a", 2, status="diverged", arm="y", loss=float("nan"))
    _fake_run(out, "c", 0, arm="x", loss=1 / 3)
    _fake_run(out, "pending", 3, summary=False)
    rows = sweep.rebuild_results(out)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run_id"] for r in table] == ["c", "b", "a"] == [r["run_id"] for r in rows]  # plan order
    cols = list(table[0])
    assert cols[: len(sweep.RESULT_COLUMNS)] == list(sweep.RESULT_COLUMNS) and cols[-2:] == ["arm", "pacing"]
    assert float(table[0]["val_loss"]) == 1 / 3  # full precision
    assert table[2]["status"] == "diverged" and table[2]["val_loss"] == "nan"
    assert table[0]["budget"] == "1000000000.0" and table[0]["arm"] == "x" and table[0]["pacing"] == "x"
    assert not list(out.glob(".results.csv.*"))  # the temporary file was renamed into place


# ------------------------------------------------------------------ end to end


def _popen(args, log):
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.sweep", *map(str, args)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv") as f:
        return {r["run_id"]: r for r in csv.DictReader(f)}


def _ckpt_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _assert_same_results(out: Path, ref: Path, rel: float = 1e-6):
    rows, ref_rows = _rows(out), _rows(ref)
    assert list(rows) == list(ref_rows)
    for rid, r in rows.items():
        for k, v in ref_rows[rid].items():
            if k in sweep.VOLATILE_COLUMNS:
                continue
            if k in ("final_train_loss", "val_loss", "val_bpb"):
                assert float(r[k]) == pytest.approx(float(v), rel=rel), (rid, k)
            else:
                assert r[k] == v, (rid, k)


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    data_path("tinyshakespeare", "input.txt")
    out = tmp_path_factory.mktemp("ref") / "sweep"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config",
            str(SMOKE),
            "--out",
            str(out),
            "--train.progress",
            "false",
            "--jobs",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p.stdout


def test_smoke_sweep_writes_results_fit_and_plots(reference_sweep):
    out, stdout = reference_sweep
    plan = sweep.make_plan(sweep.load_spec(SMOKE), {})
    rows = _rows(out)
    assert list(rows) == [r.run_id for r in plan.runs]
    for r in plan.runs:
        row = rows[r.run_id]
        assert row["status"] == "completed" and float(row["val_loss"]) < 5.0
        assert int(row["n_params"]) == r.n_params and int(row["tokens"]) == r.tokens
        assert float(row["flops_6nd"]) == 6 * r.n_params * r.tokens and float(row["budget"]) == r.budget
        lines = [json.loads(x) for x in (out / "runs" / r.run_id / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["step"] == r.steps
    fit = json.loads((out / "fit.json").read_text())
    assert "error" not in fit and fit["sweep"]["n_planned"] == len(plan.runs)
    assert all(k in fit for k in ("approach1", "approach2")) and ("E" in fit or "not_run" in fit["approach3"])
    for name in ("training_curves", "loss_vs_n", "isoflop"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    # rerunning the finished sweep trains nothing and keeps every file
    mtime = (out / "fit.json").stat().st_mtime_ns
    r2 = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "--config", str(SMOKE), "--out", str(out), *QUIET],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r2.returncode == 0 and "trained 0 run(s), kept 6" in r2.stdout
    assert (out / "fit.json").stat().st_mtime_ns == mtime
    assert [e["event"] for e in sweep.read_log(out)].count("start") == len(plan.runs)


@pytest.mark.slow
def test_smoke_sweep_sigkilled_three_times_then_resumed_equals_an_unbroken_sweep(reference_sweep, tmp_path):
    """SIGKILL at random moments three times, rerun each time: the same rows and losses as the
    unbroken sweep (rel. 1e-6; CPU training is deterministic), each logged step once, and no
    step trained twice past a checkpoint. SWEEP_KILL_SEED=<seed> replays a failure's moments."""
    n_kills = 3
    ref = reference_sweep[0]
    out = tmp_path / "sweep"
    seed = int(os.environ.get("SWEEP_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    why = f"(SWEEP_KILL_SEED={seed})"
    snapshots: list[dict[str, int]] = [{}]  # per process: run_id -> latest checkpoint step when it started
    pids: list[int] = []
    kills = 0
    for attempt in range(n_kills):
        n_before = len(sweep.read_log(out))
        with open(tmp_path / f"attempt{attempt}.log", "w") as log:
            proc = _popen(["--config", SMOKE, "--out", out, *QUIET], log)
            pids.append(proc.pid)
            deadline = time.time() + 300
            while proc.poll() is None and len(sweep.read_log(out)) <= n_before and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 2.5))  # a random moment after this attempt started training
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        snapshots.append(
            {d.name: (_ckpt_steps(d) or [0])[-1] for d in (out / "runs").iterdir() if not (d / "summary.json").exists()}
        )
    assert kills == n_kills, f"the sweep finished before kill {kills + 1} {why}"
    with open(tmp_path / "final.log", "w") as log:
        proc = _popen(["--config", SMOKE, "--out", out, *QUIET], log)
        pids.append(proc.pid)
        assert proc.wait(timeout=600) == 0, (tmp_path / "final.log").read_text()[-3000:]
    _assert_same_results(out, ref)
    events = sweep.read_log(out)
    for run_id in _rows(out):
        starts = [e for e in events if e["run_id"] == run_id and e["event"] == "start"]
        ends = [e for e in events if e["run_id"] == run_id and e["event"] == "end"]
        assert len(ends) == 1, (run_id, why)  # finished once, never started again after that
        assert events.index(ends[0]) > events.index(starts[-1])
        for e in starts:
            # no step trained twice past its last checkpoint: a (re)start begins at the latest
            # checkpoint the killed process left (0 for a run no process had started)
            assert e["start_step"] == snapshots[pids.index(e["pid"])].get(run_id, 0), (run_id, e, why)
        lines = [json.loads(x) for x in (out / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        ref_lines = [json.loads(x) for x in (ref / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [x["step"] for x in ref_lines]  # each logged step exactly once
        for a, b in zip(lines, ref_lines):
            for key in ("loss", "val_loss"):
                assert (key in a) == (key in b), (run_id, a["step"], key, why)
                if key in b:
                    assert a[key] == pytest.approx(b[key], rel=1e-6), (run_id, a["step"], key, why)
    assert json.loads((out / "fit.json").read_text())["sweep"]["results_sha256"]


@pytest.mark.slow  # the default tier's reference sweep trains two shards at once already (--jobs 2)
def test_two_shards_at_once_train_every_run_exactly_once(reference_sweep, tmp_path):
    ref = reference_sweep[0]
    out = tmp_path / "sweep"
    logs = [open(tmp_path / f"shard{i}.log", "w") for i in range(2)]
    procs = [_popen(["--config", SMOKE, "--out", out, "--shard", f"{i}/2", *QUIET], logs[i]) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, (tmp_path / "shard0.log").read_text()[-2000:]
    for f in logs:
        f.close()
    _assert_same_results(out, ref)
    events = sweep.read_log(out)
    starts = [e["run_id"] for e in events if e["event"] == "start"]
    assert sorted(starts) == sorted(_rows(ref))  # every run exactly once
    assert len({e["pid"] for e in events}) == 2
    fit = json.loads((out / "fit.json").read_text())
    assert fit["sweep"]["results_sha256"] == sweep._results_digest(out)


def test_compile_ahead_queues_each_shape_once_in_run_order_for_the_runs_to_find(tmp_path):
    """The sweep queues one compile task per shape, in the order its runs come; the Trainer a
    task builds is the one every run of that shape then trains with (same compiled step)."""
    from scaling.train import Run

    plan = sweep.make_plan(sweep.load_spec(SMOKE), {"train": {"progress": "false"}})

    class Recorder:  # an executor that only records what it is given
        def __init__(self):
            self.tasks = []

        def submit(self, fn, *args):
            self.tasks.append((fn, args))

    pool, trainers = Recorder(), {}
    sweep._compile_ahead(plan.runs, trainers, pool)
    shapes = list(dict.fromkeys(r.shape for r in plan.runs))
    assert len(pool.tasks) == len(shapes) == 3 and not trainers  # nothing built on this thread
    assert [args[1].model for _, args in pool.tasks] == [
        next(r.cfg.model for r in plan.runs if r.shape == s) for s in shapes
    ]
    fn, args = pool.tasks[0]
    fn(*args)  # the first shape's task, run here
    (built,) = trainers.values()
    evaluation = built._compiled[built._eval_name(built.eval_k)]
    assert built.step_compiled and evaluation.done() and built._compiled["init"].done()
    for r in plan.runs:
        if r.shape == shapes[0]:
            run = Run(r.cfg, tmp_path / r.run_id, trainers=trainers)
            assert run.trainer().compile_step() is built.compile_step()
            run.close()


def test_a_run_directory_held_by_another_process_is_skipped_as_busy(tmp_path, capsys):
    """The sweep and experiments.train hold a run through the same lock (runs/<run_id>/.lock):
    a run held elsewhere (here by this process, through another open file) is skipped, untouched."""
    spec = write_spec(tmp_path, BASE + "grid: {models: [1e4], tokens: [1536]}\nfit: false\n")
    out = tmp_path / "sweep"
    run_dir = out / "runs" / "L1-d16-D1.5e3-s0"
    with run_io.hold_directory(run_dir):
        res = sweep_cli.main(["--config", str(spec), "--out", str(out), *QUIET])
    assert res.busy == ["L1-d16-D1.5e3-s0"] and res.trained == [] and res.rows == []
    printed = capsys.readouterr()
    assert "being trained by another process" in printed.out + printed.err
    assert sorted(p.name for p in run_dir.iterdir()) == [run_io.LOCK_FILE]


@pytest.mark.slow
def test_killing_a_sweep_with_workers_stops_them_and_a_rerun_resumes(reference_sweep, tmp_path):
    """--jobs 2: the workers die with the command (SIGKILL leaves no worker training), and
    rerunning resumes to the results of an unbroken sweep."""
    ref = reference_sweep[0]
    out = tmp_path / "sweep"
    with open(tmp_path / "first.log", "w") as log:
        proc = _popen(["--config", SMOKE, "--out", out, "--train.progress", "false", "--jobs", "2"], log)
        deadline = time.time() + 300
        while not sweep.read_log(out) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        workers = {e["pid"] for e in sweep.read_log(out)}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert workers and proc.pid not in workers
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    with open(tmp_path / "again.log", "w") as log:
        proc = _popen(["--config", SMOKE, "--out", out, "--train.progress", "false", "--jobs", "2"], log)
        assert proc.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    _assert_same_results(out, ref)
    assert (out / "fit.json").is_file()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not training
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
