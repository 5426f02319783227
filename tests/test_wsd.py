"""Warmup-stable-decay: the schedule's values, cooldown branches of a run (bitwise equal to
unbroken runs, also after SIGKILL), bad --branch-from input, and wsd sweeps whose shorter runs
branch from the longest of their family."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import train as train_cli
from scaling import sweep
from scaling.config import OptimConfig
from scaling.errors import UsageError
from scaling.schedule import decay_start
from scaling.train import load_run
from scaling.train.optimizer import lr_schedule
from tests.helpers import REPO, TINY

# ------------------------------------------------------------------ the schedule


def _lrs(cfg: OptimConfig, total: int, steps) -> np.ndarray:
    return np.asarray(jax.device_get(lr_schedule(cfg, total)(np.asarray(steps, np.int32))))


@settings(max_examples=15, deadline=None)
@given(
    t1=st.integers(1, 3000),
    extra=st.integers(1, 3000),
    warmup=st.integers(0, 50),
    fraction=st.floats(0.01, 1.0),
    shape=st.sampled_from(["linear", "1-sqrt"]),
)
def test_wsd_runs_agree_bitwise_before_the_shorter_runs_decay(t1, extra, warmup, fraction, shape):
    cfg = OptimConfig(lr=3e-3, warmup_steps=warmup, schedule="wsd", decay_fraction=fraction, decay_shape=shape)
    t2 = t1 + extra
    start = decay_start(cfg, t1)
    assert 0 <= start < t1 and start == t1 - max(1, min(t1, round(np.float32(fraction) * np.float32(t1))))
    if warmup > t1 - 1:  # a run shorter than the warmup caps it: no shared prefix to speak of
        return
    steps = np.arange(start)
    a, b = _lrs(cfg, t1, steps), _lrs(cfg, t2, steps)
    assert a.tobytes() == b.tobytes()  # bit for bit, not merely close
    if start:  # the traced decay start is the host's: the rate leaves the peak exactly there
        assert _lrs(cfg, t1, [start])[0] < _lrs(cfg, t1, [start - 1])[0] or start <= warmup


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_warms_up_holds_the_peak_then_decays_to_the_floor(shape):
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=4, schedule="wsd", decay_fraction=0.25, decay_shape=shape)
    total = 40
    lr = _lrs(cfg, total, np.arange(total))
    np.testing.assert_allclose(lr[:4], 2.0 * np.arange(1, 5) / 5, rtol=1e-6)
    assert decay_start(cfg, total) == 30
    assert np.all(lr[4:30] == np.float32(2.0))
    k = np.arange(1, 11) / 10  # the decay's progress at steps 30..39
    left = 1 - (k if shape == "linear" else np.sqrt(k))
    np.testing.assert_allclose(lr[30:], 0.2 + 1.8 * left, rtol=1e-6, atol=1e-7)
    assert lr[-1] == pytest.approx(0.2, abs=1e-7)  # the floor at the last step
    assert np.all(np.diff(lr[29:]) < 0)
    if shape == "1-sqrt":  # 1-sqrt falls faster early than linear
        lin = 0.2 + 1.8 * (1 - k)
        assert np.all(lr[30:-1] < lin[:-1])


def test_wsd_decays_to_zero_and_cosine_is_unchanged():
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, schedule="wsd")
    assert _lrs(wsd, 100, [99])[0] == 0.0 and decay_start(wsd, 100) == 80
    cos = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lr = _lrs(cos, 110, np.arange(110))
    assert lr[-1] == pytest.approx(0.1, abs=1e-6) and lr[10] == pytest.approx(1.0)


def test_wsd_fields_are_checked_and_enter_the_identity_only_for_wsd():
    for bad in ({"schedule": "step"}, {"decay_shape": "cosine"}, {"decay_fraction": 0.0}, {"decay_fraction": 1.5}):
        with pytest.raises(UsageError, match="optim"):
            OptimConfig(**bad)
    from scaling.config import Config

    base = Config()
    cosine_other = Config(optim=OptimConfig(decay_fraction=0.5))
    assert base.identity_hash() == cosine_other.identity_hash()  # cosine ignores the wsd fields
    a = Config(optim=OptimConfig(schedule="wsd"))
    b = Config(optim=OptimConfig(schedule="wsd", decay_fraction=0.5))
    assert len({base.identity_hash(), a.identity_hash(), b.identity_hash()}) == 3


# ------------------------------------------------------------------ branches of a run

WSD = [*TINY, "--optim.schedule", "wsd", "--optim.min_lr_ratio", "0", "--checkpoint.keep", "1"]
PARENT = [*WSD, "--train.tokens", "40960", "--checkpoint.every_steps", "20"]  # 160 steps, decay from 128
SHORT = [*WSD, "--train.tokens", "20480", "--checkpoint.every_steps", "4"]  # 80 steps, decay from 64


def _params(out):
    return jax.tree.leaves(jax.device_get(load_run(out)[1]))


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _tree(d):
    """Every file under ``d`` with its size and modification time (to see that nothing changed)."""
    return {p.relative_to(d): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A 160-step wsd parent that keeps its checkpoint at step 64 (pruned away otherwise: it keeps
    one checkpoint and saves every 20 steps), and the 80-step wsd run trained from scratch."""
    base = tmp_path_factory.mktemp("wsd-family")
    train_cli.main(["--out", str(base / "parent"), *PARENT, "--keep-steps", "64"])
    train_cli.main(["--out", str(base / "scratch"), *SHORT])
    return base


def test_parent_keeps_its_branch_point_beside_the_last_checkpoint(family):
    assert sorted(int(p.name) for p in (family / "parent" / "checkpoints").iterdir() if p.name.isdigit()) == [64, 160]


def test_a_branch_equals_the_run_trained_from_scratch_bitwise(family, tmp_path):
    before = _tree(family / "parent")
    out = tmp_path / "branch"
    summary = train_cli.main(["--out", str(out), *SHORT, "--branch-from", f"{family / 'parent'}@64"])
    assert _tree(family / "parent") == before  # the parent is only read
    for a, b in zip(_params(out), _params(family / "scratch"), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = json.loads((family / "scratch" / "summary.json").read_text())
    for key in ("val_loss", "final_train_loss", "tokens", "steps", "flops_6nd"):
        assert summary[key] == ref[key], key
    assert summary["parent"] == "parent" and summary["stable_steps"] == 64
    assert ref["parent"] is None and ref["stable_steps"] is None
    lines = _metrics(out)
    assert lines[0]["step"] > 64 and lines[-1]["step"] == 80
    assert [x["loss"] for x in lines] == [x["loss"] for x in _metrics(family / "scratch") if x["step"] > 64]


@pytest.mark.slow
def test_a_branch_killed_mid_cooldown_resumes_to_the_unbroken_run(family, tmp_path):
    out = tmp_path / "branch"
    args = [
        sys.executable,
        "-m",
        "experiments.train",
        "--out",
        str(out),
        *SHORT,
        "--branch-from",
        f"{family / 'parent'}@64",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        committed = [int(p.parent.name) for p in out.glob("checkpoints/*/checksums.json") if p.parent.name.isdigit()]
        if any(s >= 68 for s in committed):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the branch ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the rerun resumes from the branch's own checkpoint, even with the parent's branch point gone
    hidden = family / "parent" / "checkpoints" / "64"
    os.rename(hidden, hidden.with_name("hidden-64"))
    try:
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        os.rename(hidden.with_name("hidden-64"), hidden)
    assert r.returncode == 0, r.stderr
    for a, b in zip(_params(out), _params(family / "scratch"), strict=True):
        np.testing.assert_array_equal(a, b)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parent"] == "parent" and summary["stable_steps"] == 64
    assert [x["step"] for x in _metrics(out)] == [x["step"] for x in _metrics(family / "scratch") if x["step"] > 64]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--branch-from", "nowhere"], "PARENT_RUN_DIR@STEP"),
        (["--branch-from", "{tmp}/missing@64"], "no run directory"),
        (["--branch-from", "{parent}@60"], "no checkpoint at step 60"),
        (["--branch-from", "{parent}@72"], "after this run's decay start"),
        (["--branch-from", "{parent}@64", "--optim.lr", "2e-3"], "optim.lr"),
        (["--branch-from", "{parent}@64", "--optim.schedule", "cosine"], "optim.schedule wsd"),
        (["--keep-steps", "5,x"], "--keep-steps"),
        (["--keep-steps", "500"], "keep_steps"),
    ],
)
def test_bad_branch_input_exits_2_with_one_line(family, tmp_path, capsys, flags, message):
    flags = [f.format(tmp=tmp_path, parent=family / "parent") for f in flags]
    out = tmp_path / "branch"
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *SHORT, *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()


def test_a_branch_after_the_parents_decay_start_is_refused(family, tmp_path, capsys):
    """The parent's own decay start bounds the branch point too (the parent here is 80 steps)."""
    with pytest.raises(SystemExit):
        train_cli.main(
            ["--out", str(tmp_path / "b"), *WSD, "--train.tokens", "30720", "--branch-from", f"{family / 'scratch'}@80"]
        )
    assert "after the parent's decay start" in capsys.readouterr().err


# ------------------------------------------------------------------ wsd sweeps

WSD_SPEC = """
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32}
  optim: {schedule: wsd, min_lr_ratio: 0, warmup_steps: 2}
  train: {batch_size: 8, eval_every: 1000, eval_batches: 2, progress: false}
  checkpoint: {every_steps: 1000, keep: 1}
grid:
  models: [{n_layer: 1, d_model: 16}, {n_layer: 2, d_model: 16}]
  tokens: [2560, 5120, 10240]
fit: false
"""
"""2 sizes x 3 token budgets (10, 20 and 40 steps; decay starts 8, 16 and 32)."""


def _spec(tmp_path, extra: str = "", base: str = WSD_SPEC):
    p = tmp_path / "wsd.yaml"
    p.write_text(base + extra)
    return sweep.load_spec(p)


def test_a_wsd_plan_groups_families_parent_first(tmp_path):
    plan = sweep.make_plan(_spec(tmp_path), {})
    runs = {r.run_id: r for r in plan.runs}
    assert [r.run_id for r in plan.runs] == [
        "L1-d16-D1.0e4-s0",
        "L1-d16-D2.6e3-s0",
        "L1-d16-D5.1e3-s0",
        "L2-d16-D1.0e4-s0",
        "L2-d16-D2.6e3-s0",
        "L2-d16-D5.1e3-s0",
    ]
    parent = runs["L1-d16-D1.0e4-s0"]
    assert parent.parent is None and parent.keep_steps == (8, 16) and parent.train_steps == 40
    short = runs["L1-d16-D2.6e3-s0"]
    assert (short.parent, short.stable_steps, short.train_steps) == ("L1-d16-D1.0e4-s0", 8, 2)
    assert short.train_flops == pytest.approx(short.flops["6nd"] * 2 / 10)
    assert runs["L2-d16-D5.1e3-s0"].parent == "L2-d16-D1.0e4-s0"
    assert [r.index for r in plan.runs] == list(range(6)) and {r.family for r in plan.runs} == {0, 1}
    for i in (0, 1):  # whole families per shard
        assert {r.run_id.split("-D")[0] for r in plan.shard(i, 2)} == {["L1-d16", "L2-d16"][i]}
    text = sweep.format_plan(plan)
    assert "#0@8" in text and "#3@16" in text and "4 cooldown branches" in text
    assert f"C = {sum(r.train_flops for r in plan.runs):.3g}" in text
    off = sweep.make_plan(_spec(tmp_path, "cooldown_branches: false\n"), {})
    assert all(r.parent is None and not r.keep_steps for r in off.runs)
    cosine = sweep.make_plan(_spec(tmp_path, base=WSD_SPEC.replace("schedule: wsd", "schedule: cosine")), {})
    assert all(r.parent is None for r in cosine.runs) and [r.family for r in cosine.runs] == list(range(6))


def test_noise_seeds_and_min_tokens_per_param(tmp_path):
    plan = sweep.make_plan(_spec(tmp_path, "noise: {seeds: [7], models: 1, budgets: 2}\n"), {})
    noisy = [r for r in plan.runs if r.seed == 7]
    assert sorted(r.run_id for r in noisy) == ["L1-d16-D2.6e3-s7", "L1-d16-D5.1e3-s7"]
    assert {r.parent for r in noisy} == {None, "L1-d16-D5.1e3-s7"}  # its own family: seed 7's longest
    iso = """
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32}
  optim: {schedule: wsd}
  train: {batch_size: 8}
isoflop: {budgets: [1e9, 4e9], models: [{n_layer: 1, d_model: 16}, {n_layer: 2, d_model: 32}],
          min_tokens_per_param: 2}
fit: false
"""
    plan = sweep.make_plan(_spec(tmp_path, base=iso), {})
    assert all(r.tokens >= 2 * r.n_params for r in plan.runs)
    assert any("min_tokens_per_param" in d for d in plan.dropped)
    banded = sweep.make_plan(
        _spec(tmp_path, base=iso.replace("min_tokens_per_param: 2", "max_tokens_per_param: 5")), {}
    )
    ratios = sorted(r.tokens / r.n_params for r in plan.runs + banded.runs)
    assert all(r.tokens <= 5 * r.n_params for r in banded.runs) and ratios[-1] > 5  # the band bites
    assert any("max_tokens_per_param 5" in d for d in banded.dropped)
    with pytest.raises(UsageError, match="max_tokens_per_param .* must be above"):
        sweep.make_plan(
            _spec(
                tmp_path,
                base=iso.replace("min_tokens_per_param: 2", "min_tokens_per_param: 2, max_tokens_per_param: 1"),
            ),
            {},
        )
    for extra, message in [
        ("noise: {seeds: [0], models: 1, budgets: 1}\nseeds: [0]\n", "sweep's seeds"),
        ("noise: {seeds: [1], models: 3, budgets: 1}\n", "noise.models is 3"),
        ("noise: {seeds: [1], models: 1}\n", "needs budgets"),
        ("noise: {seeds: [-1], models: 1, budgets: 1}\n", "non-negative"),
        ("cooldown_branches: maybe\n", "cooldown_branches"),
    ]:
        with pytest.raises(UsageError, match=message):
            sweep.make_plan(_spec(tmp_path, extra), {})


@pytest.fixture(scope="module")
def wsd_sweeps(tmp_path_factory):
    """The tiny wsd sweep with cooldown branches, and the same runs all trained from scratch."""
    base = tmp_path_factory.mktemp("wsd-sweeps")
    for name, extra in (("branched", ""), ("scratch", "cooldown_branches: false\n")):
        spec = base / f"{name}.yaml"
        spec.write_text(WSD_SPEC + extra)
        sweep.execute(sweep.make_plan(sweep.load_spec(spec), {}), base / name, progress=False, echo=lambda *a: None)
    return base


def _rows(out):
    with open(out / "results.csv") as f:
        return {r["run_id"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_a_wsd_sweep_trains_branches_that_equal_runs_from_scratch(wsd_sweeps):
    rows, ref = _rows(wsd_sweeps / "branched"), _rows(wsd_sweeps / "scratch")
    assert rows.keys() == ref.keys() and len(rows) == 6
    header = list(next(iter(rows.values())))
    assert header[header.index("target_n") + 1 :][:4] == ["parent", "stable_steps", "lr", "warmup_steps"]
    for run_id, row in rows.items():
        assert row["status"] == "completed" and row["lr"] == "0.001" and row["warmup_steps"] == "2"
        assert row["val_loss"] == ref[run_id]["val_loss"]  # the same floats, to the last digit
        assert ref[run_id]["parent"] == "" and ref[run_id]["stable_steps"] == ""
    assert (rows["L1-d16-D2.6e3-s0"]["parent"], rows["L1-d16-D2.6e3-s0"]["stable_steps"]) == ("L1-d16-D1.0e4-s0", "8")
    assert rows["L2-d16-D1.0e4-s0"]["parent"] == ""
    for a, b in zip(
        _params(wsd_sweeps / "branched" / "runs" / "L2-d16-D5.1e3-s0"),
        _params(wsd_sweeps / "scratch" / "runs" / "L2-d16-D5.1e3-s0"),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_branch_without_its_parents_checkpoint_is_reported_not_retrained(wsd_sweeps, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(wsd_sweeps / "branched", out)
    for run_id in ("L1-d16-D2.6e3-s0", "L1-d16-D5.1e3-s0"):
        shutil.rmtree(out / "runs" / run_id)
    shutil.rmtree(out / "runs" / "L1-d16-D1.0e4-s0" / "checkpoints" / "8")
    plan = sweep.make_plan(_spec(tmp_path), {})
    res = sweep.execute(plan, out, progress=False, echo=lambda *a: None)
    assert res.trained == ["L1-d16-D5.1e3-s0"]
    assert (
        len(res.blocked) == 1
        and res.blocked[0].startswith("L1-d16-D2.6e3-s0:")
        and "no checkpoint at step 8" in res.blocked[0]
    )
    assert res.pending == ["L1-d16-D2.6e3-s0"] and not (out / "runs" / "L1-d16-D2.6e3-s0" / "summary.json").exists()


@pytest.mark.slow
def test_a_sweep_killed_in_a_branch_resumes_it_to_the_unbroken_result(wsd_sweeps, tmp_path):
    spec = tmp_path / "wsd.yaml"
    spec.write_text(WSD_SPEC.replace("every_steps: 1000", "every_steps: 1"))
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "experiments.sweep", "--config", str(spec), "--out", str(out)]
    env = dict(os.environ, SCALING_COMPILE_CACHE="off")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    branch = out / "runs" / "L1-d16-D5.1e3-s0"  # from step 16 of the 40-step parent to 20
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(branch.glob("checkpoints/1[7-9]/checksums.json")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the sweep ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (branch / "summary.json").exists()
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows, ref = _rows(out), _rows(wsd_sweeps / "branched")
    assert {k: v["val_loss"] for k, v in rows.items()} == {k: v["val_loss"] for k, v in ref.items()}
    assert rows["L1-d16-D5.1e3-s0"]["parent"] == "L1-d16-D1.0e4-s0"
    starts = [e for e in sweep.read_log(out) if e.get("event") == "start" and e["run_id"] == branch.name]
    assert [e["start_step"] for e in starts][0] == 16 and starts[-1]["start_step"] > 16
