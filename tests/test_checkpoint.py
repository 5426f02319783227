"""Checkpoints: exact resume after SIGKILL, config changes, resharding, NaN, pruning (corrupt
files: test_faults_checkpoint.py)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import train as train_cli
from scaling.train import load_run
from tests.helpers import REPO, TINY, run_cli

CKPT = ["--checkpoint.every_steps", "20", "--checkpoint.keep", "10"]


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _params(out):
    return jax.tree.leaves(jax.device_get(load_run(out)[1]))


def reference_run(tmp_path_factory):
    """An unbroken TINY run with checkpoints at steps 20, 40, 60 and 80, trained once per test
    session (test_faults_checkpoint.py uses it too). Tests copy it, never change it."""
    out = tmp_path_factory.getbasetemp() / "checkpoint-reference"
    if not (out / "summary.json").is_file():
        train_cli.main(["--out", str(out), *TINY, *CKPT])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def test_sigkill_then_rerun_is_bitwise_equal_to_an_unbroken_run(reference, tmp_path):
    out = tmp_path / "run"
    kill_after = random.Random(time.time_ns()).randint(21, 75)  # some step after the first checkpoint
    args = [sys.executable, "-m", "experiments.train", "--out", str(out), *TINY, *CKPT]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [x["step"] for x in _metrics(out)] if (out / "metrics.jsonl").exists() else []
        if steps and steps[-1] >= kill_after and (out / "checkpoints" / "20").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before the kill at step {kill_after}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines, ref_lines = _metrics(out), _metrics(reference)
    assert [x["step"] for x in lines] == [x["step"] for x in ref_lines]  # each step exactly once
    assert [x["loss"] for x in lines] == [x["loss"] for x in ref_lines]
    for a, b in zip(_params(out), _params(reference)):
        np.testing.assert_array_equal(a, b)
    summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    for key in ("val_loss", "val_bpb", "final_train_loss", "tokens", "flops_6nd"):
        assert summary[key] == ref_summary[key], key


def test_rerunning_a_finished_run_reports_the_same_summary(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    summary = train_cli.main(["--out", str(out), *TINY, *CKPT])
    ref_summary = json.loads((reference / "summary.json").read_text())
    for key in ("val_loss", "final_train_loss", "status", "steps_done"):
        assert summary[key] == ref_summary[key], key
    # wall time counts the first process's time up to its last checkpoint plus the rerun's
    from scaling.checkpoint import Checkpointer
    from scaling.config import CheckpointConfig

    ckpt = Checkpointer(out / "checkpoints", CheckpointConfig())
    before = ckpt.read_meta(80)["wall_s"]
    ckpt.close()
    assert 0 < before <= ref_summary["wall_s"] < summary["wall_s"]
    assert summary["wall_s"] > before + 0.1


def test_changed_config_is_refused_but_safe_fields_may_change(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "metrics.jsonl").read_text()
    for args in (["--model.d_model", "64"], ["--optim.lr", "3e-3"]):
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--out", str(out), *TINY, *CKPT, *args])
        assert e.value.code == 2 and "different config" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    summary = train_cli.main(["--out", str(out), *TINY, *CKPT, "--train.eval_every", "20"])
    assert summary["status"] == "completed"
    summary = train_cli.main(
        ["--out", str(out), *TINY, *CKPT, "--optim.lr", "3e-3", "--resume.allow_config_change", "true"]
    )
    assert summary["status"] == "completed"


def test_nan_ends_the_run_as_diverged_with_a_restorable_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    summary = train_cli.main(["--out", str(out), *TINY, *CKPT, "--debug.inject_nan_step", "45"])
    assert summary["status"] == "diverged"
    assert "diverged at step 46" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    lines = _metrics(out)
    assert lines[-1]["step"] == 46 and lines[-1]["loss"] != lines[-1]["loss"]  # NaN logged
    cfg, params = load_run(out)  # the last good checkpoint (step 40) restores
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    assert max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == 40


def test_skip_nonfinite_skips_the_bad_step(tmp_path, capsys):
    summary = train_cli.main(
        ["--out", str(tmp_path / "run"), *TINY, "--debug.inject_nan_step", "45", "--train.skip_nonfinite", "1"]
    )
    assert summary["status"] == "completed" and "update skipped" in capsys.readouterr().err


@pytest.mark.slow  # three 8-device CLI runs; the default tier trains these meshes in test_mesh_matrix.py
def test_restore_under_a_different_mesh(tmp_path):
    """Save on mesh (data 2, model 4) of 8 devices; resume at step 40 on 1 device and on (data 8)."""
    tp = ["--model.n_head", "4", "--mesh.data", "2", "--mesh.model", "4"]
    src = tmp_path / "src"
    r = run_cli("experiments.train", "--out", src, *TINY, *CKPT, *tp, devices=8)
    assert r.returncode == 0, r.stderr
    ref = [x["loss"] for x in _metrics(src)]
    for name, devices, mesh in (("one", None, ["--mesh.data", "1"]), ("dp8", 8, ["--mesh.data", "8"])):
        out = tmp_path / name
        shutil.copytree(src, out)
        for d in (out / "checkpoints").iterdir():
            if d.name.isdigit() and int(d.name) > 40:
                shutil.rmtree(d)
        r = run_cli("experiments.train", "--out", out, *TINY, *CKPT, "--model.n_head", "4", *mesh, devices=devices)
        assert r.returncode == 0, r.stderr
        lines = _metrics(out)
        assert [x["step"] for x in lines] == [x["step"] for x in _metrics(src)]
        np.testing.assert_allclose([x["loss"] for x in lines], ref, rtol=1e-4)


@pytest.mark.parametrize("async_save", [True, False])
def test_keep_best_keeps_the_lowest_validation_loss_beside_the_last_k(tmp_path, async_save):
    """keep=2 with keep_best: after saves at steps 1-6 the directory holds the last two and the
    step of the lowest validation loss; an unevaluated save never counts as the best."""
    from scaling.checkpoint import Checkpointer, verify_step
    from scaling.config import CheckpointConfig

    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(keep=2, keep_best=True, async_save=async_save))
    val = {1: 3.0, 2: 1.0, 3: None, 4: 2.5, 5: 2.2, 6: 2.4}
    for step, v in val.items():
        state = {"w": np.full((3,), float(step), np.float32)}
        ck.save(step, state, {"val_loss": v})
    ck.wait()
    assert ck.steps() == [2, 5, 6]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "5", "6"]  # nothing left of pruned steps
    assert [verify_step(ck.step_dir(s)) for s in ck.steps()] == [None] * 3  # each with a manifest that checks
    ck.close()
    plain = Checkpointer(tmp_path / "plain", CheckpointConfig(keep=2, async_save=async_save))
    for step, v in val.items():
        plain.save(step, {"w": np.zeros(3, np.float32)}, {"val_loss": v})
    plain.wait()
    assert plain.steps() == [5, 6]
    plain.close()
