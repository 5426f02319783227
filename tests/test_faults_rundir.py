"""Fault injection on run directories: another config's run, a failed resume, two processes on
one directory, a divergence, an unwritable directory mid-run, foreign runs in a sweep
directory, and the permissions of what is written."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from experiments import train as train_cli
from scaling import config_parse, sweep
from scaling import io as run_io
from scaling.checkpoint import Checkpointer
from scaling.config import CheckpointConfig
from scaling.io import load_yaml
from scaling.train import load_run
from tests.helpers import REPO, TINY, run_cli

# 40 steps, checkpoints every 10, evaluations every 20
SHORT = [
    *TINY,
    "--train.tokens",
    "10240",
    "--train.eval_every",
    "20",
    "--checkpoint.every_steps",
    "10",
    "--checkpoint.keep",
    "10",
]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the lock, by relative path, with its bytes."""
    return {
        str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != run_io.LOCK_FILE
    }


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train_cli.main(["--out", str(out), *SHORT])["status"] == "completed"
    return out


# ------------------------------------------------------------------ another config, starting over


@pytest.mark.parametrize("kept", [("config.yaml", "metrics.jsonl", "summary.json"), ("metrics.jsonl",)])
def test_another_config_into_a_directory_without_checkpoints_is_refused_untouched(reference, tmp_path, capsys, kept):
    """Checkpoints deleted (or never written): the directory's own config.yaml still tells the
    run apart; outputs without a config.yaml are not taken over either."""
    out = tmp_path / "run"
    out.mkdir()
    for name in kept:
        shutil.copy(reference / name, out / name)
    before = _files(out)
    msg = _refused(["--out", str(out), *SHORT, "--optim.lr", "3e-3"], capsys)
    assert "--overwrite" in msg and ("different config" in msg or "no config.yaml" in msg), msg
    assert _files(out) == before  # same files, same bytes; no checkpoints directory


def test_overwrite_starts_over_removing_only_the_runs_outputs(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    summary = train_cli.main(["--out", str(out), *SHORT, "--optim.lr", "3e-3", "--overwrite"])
    assert summary["status"] == "completed"
    assert [x["step"] for x in _metrics(out)] == [x["step"] for x in _metrics(reference)]  # each step once
    assert _metrics(out)[-1]["loss"] != _metrics(reference)[-1]["loss"]  # a new run, not the old lines
    cfg = config_parse.from_dict(load_yaml(out / "config.yaml"))
    assert cfg.optim.lr == 3e-3
    ckpt = Checkpointer(out / "checkpoints", CheckpointConfig())
    try:
        assert {ckpt.read_meta(s)["config_hash"] for s in ckpt.steps()} == {cfg.identity_hash()}
    finally:
        ckpt.close()
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p.name for p in out.iterdir() if "removing" in p.name]


def test_failed_resume_leaves_the_directory_readable(reference, tmp_path, capsys):
    """A resume that fails (here: a changed model whose state no checkpoint fits) leaves
    config.yaml describing the checkpoints, so generate and evaluate still load them."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _files(out)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *SHORT, "--model.d_model", "64", "--resume.allow_config_change", "true"])
    assert e.value.code == 2 and "restore" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (out / "config.yaml").read_bytes() == before["config.yaml"]
    assert (out / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    cfg, _ = load_run(out)
    assert cfg.model.d_model == 32


def test_a_restored_checkpoint_of_another_config_is_refused(reference, tmp_path, capsys):
    """Checkpoints alone (no config.yaml, metrics or summary) whose latest metadata cannot be
    read: the identity is checked on the checkpoint actually restored (the previous one),
    before training and before config.yaml is written."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        (out / name).unlink()
    (out / "checkpoints" / "40" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *SHORT, "--optim.lr", "3e-3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "different config" in err[-1] and "checkpoint 30" in err[-1], err
    assert sorted(p.name for p in out.iterdir()) == [run_io.LOCK_FILE, "checkpoints"]


# ------------------------------------------------------------------ two processes; divergence


@pytest.fixture(scope="module")
def contended(tmp_path_factory) -> dict:
    """A CLI run that diverges (NaN injected at step 30), and a second in-process run on the
    same --out started while the first holds the directory."""
    out = tmp_path_factory.mktemp("two") / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--out", str(out), *SHORT, "--debug.inject_nan_step", "30"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder = f"pid {proc.pid} on "
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and holder not in run_io.lock_holder(out / ".lock"):
        time.sleep(0.05)
    assert proc.poll() is None, "the first run ended before the second started"
    err = StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as second:
        train_cli.main(["--out", str(out), *SHORT])
    _, stderr = proc.communicate(timeout=300)
    return {
        "out": out,
        "pid": proc.pid,
        "rc": proc.returncode,
        "stderr": stderr,
        "second_code": second.value.code,
        "second_err": err.getvalue(),
    }


def test_a_second_process_on_one_directory_exits_2_naming_the_holder(contended):
    lines = contended["second_err"].strip().splitlines()
    assert contended["second_code"] == 2 and len(lines) == 1, lines
    assert f"in use by pid {contended['pid']} on " in lines[0]
    steps = [x["step"] for x in _metrics(contended["out"])]
    assert steps == sorted(set(steps)) and steps[-1] == 31  # the first run's lines, each once, in order
    assert not [p for p in (contended["out"] / "checkpoints").iterdir() if "tmp" in p.name]


def test_a_diverged_run_exits_3(contended):
    assert contended["rc"] == train_cli.EXIT_DIVERGED == 3, contended["stderr"][-2000:]
    assert "diverged at step 31" in contended["stderr"]
    assert json.loads((contended["out"] / "summary.json").read_text())["status"] == "diverged"


# ------------------------------------------------------------------ an unwritable directory mid-run


def test_unwritable_checkpoints_mid_run_end_in_one_line_and_the_rerun_resumes(reference, tmp_path, capfd, monkeypatch):
    """Simulates the checkpoints directory ceasing to take writes at step 20 (after the save at
    step 10 is on disk). The tests run as root, where chmod does not stop writes, so the
    directory is moved aside and a file put in its place: the next save meets the OSError
    (ENOTDIR) a read-only or vanished directory gives (EACCES, ENOENT)."""
    out = tmp_path / "run"
    ckpts, aside = out / "checkpoints", out / "checkpoints.aside"
    due = Checkpointer.due

    def due_then_break(self, step, final, steps_left=None):
        if step == 20 and not aside.exists():
            self.wait()
            os.replace(ckpts, aside)
            ckpts.write_text("not a directory")
        return due(self, step, final, steps_left)

    monkeypatch.setattr(Checkpointer, "due", due_then_break)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *SHORT])
    err = capfd.readouterr().err
    assert e.value.code == 2
    assert "Traceback" not in err and "ERROR" not in err and err.count("error: ") == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot save a checkpoint") and "Not a directory" in last
    monkeypatch.setattr(Checkpointer, "due", due)
    ckpts.unlink()
    os.replace(aside, ckpts)  # writable again
    summary = train_cli.main(["--out", str(out), *SHORT])
    assert summary["status"] == "completed" and "from scratch" not in capfd.readouterr().err
    assert [x["step"] for x in _metrics(out)] == [x["step"] for x in _metrics(reference)]
    assert [x["loss"] for x in _metrics(out)] == [x["loss"] for x in _metrics(reference)]  # resumed at 10


# ------------------------------------------------------------------ sweeps: foreign runs, permissions

ONE_RUN_SPEC = """
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32}
  train: {batch_size: 8, progress: false}
grid: {models: [1e4], tokens: [1536]}
fit: false
"""


def _foreign_run(out: Path, run_id: str, cfg) -> None:
    d = out / "runs" / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(cfg.to_yaml())
    (d / "plan.json").write_text(json.dumps({"index": 0, "run_id": run_id, "budget": None, "seed": 0}))
    (d / "summary.json").write_text(json.dumps({"n_params": 5, "tokens": 1536, "val_loss": 9.0, "status": "completed"}))


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o640
    finally:
        os.umask(old)


def test_a_foreign_run_in_a_sweep_directory_is_left_out_and_named(tmp_path, umask_027):
    spec = tmp_path / "spec.yaml"
    spec.write_text(ONE_RUN_SPEC)
    out = tmp_path / "sweep"
    plan = sweep.make_plan(sweep.load_spec(spec), {})
    _foreign_run(out, "L4-d64-D1.0e6-s0", plan.runs[0].cfg)  # another spec's run that shared --out
    r = run_cli("experiments.sweep", "--config", spec, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "results.csv") as f:
        assert [row["run_id"] for row in csv.DictReader(f)] == [plan.runs[0].run_id]
    named = [line for line in r.stdout.splitlines() if "ignored" in line]
    assert len(named) == 1 and "L4-d64-D1.0e6-s0" in named[0], r.stdout
    # everything the sweep and its run wrote has the umask's mode, as config.yaml (0640 here)
    run_dir = out / "runs" / plan.runs[0].run_id
    for p in (
        out / "plan.json",
        out / "results.csv",
        out / "sweep_log.jsonl",
        run_dir / "config.yaml",
        run_dir / "metrics.jsonl",
        run_dir / "summary.json",
        run_dir / "plan.json",
    ):
        assert _mode(p) == umask_027 == _mode(run_dir / "config.yaml"), p


def test_results_and_fit_count_only_the_plans_runs_and_are_written_with_the_umask(tmp_path, umask_027):
    """A run of another plan under a planned run id (another config) and one under another id
    are left out of results.csv and the fit, and named in fit.json."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(ONE_RUN_SPEC.replace("[1e4]", "[1e4, 4e4]"))
    out = tmp_path / "sweep"
    plan = sweep.make_plan(sweep.load_spec(spec), {})  # too few runs for a law: fitted anyway below
    plan = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, fit=True))
    mine, theirs = plan.runs
    _foreign_run(out, mine.run_id, mine.cfg)
    other = config_parse.from_dict(config_parse.merge(theirs.cfg.to_dict(), {"optim": {"lr": 0.5}}))
    _foreign_run(out, theirs.run_id, other)
    _foreign_run(out, "L9-d144-D1.5e3-s0", mine.cfg)
    rows = sweep.rebuild_results(out, plan)
    assert [r["run_id"] for r in rows] == [mine.run_id]
    assert sorted(sweep.ignored_runs(out, plan)) == sorted([theirs.run_id, "L9-d144-D1.5e3-s0"])
    sweep.finalize(plan, out, echo=lambda _: None, force=True)
    saved = json.loads((out / "fit.json").read_text())
    assert saved["sweep"]["results_sha256"] == sweep._results_digest(out)  # fitted on the table above
    assert sorted(saved["sweep"]["ignored"]) == sorted([theirs.run_id, "L9-d144-D1.5e3-s0"])
    for name in ("fit.json", "results.csv"):
        assert _mode(out / name) == umask_027, name
    assert not list(out.glob(".*.tmp"))


def test_atomic_writes_create_files_as_open_does(tmp_path, umask_027):
    run_io.atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == umask_027
    (tmp_path / "a.txt").chmod(0o600)
    run_io.atomic_write_bytes(tmp_path / "a.txt", b"y")  # a replaced file gets the umask's mode too
    assert _mode(tmp_path / "a.txt") == umask_027 and (tmp_path / "a.txt").read_bytes() == b"y"
