"""Fault injection into checkpoints: flipped bytes, truncated and deleted files, a step whose
checksum manifest was never written, every checkpoint corrupt. Nothing corrupt is resumed: the
run warns once, moves the step aside, resumes from the previous checkpoint and ends bitwise
equal to an unbroken run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from experiments import train as train_cli
from scaling.checkpoint import MANIFEST, Checkpointer, verify_step
from scaling.config import CheckpointConfig
from scaling.errors import UsageError
from scaling.train import load_run
from tests.helpers import TINY
from tests.test_checkpoint import CKPT, _metrics, _params, reference_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _data_file(step_dir):
    """The largest array-data file of a step (orbax's OCDBT data under state/)."""
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    return max(files, key=lambda f: f.stat().st_size)


def _flip(step_dir):
    f = _data_file(step_dir)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 256] = bytes(b ^ 0xFF for b in data[mid : mid + 256])
    f.write_bytes(bytes(data))


def _truncate(step_dir):
    f = _data_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def _delete(step_dir):
    _data_file(step_dir).unlink()


def _warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning: checkpoint")]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(_flip, id="flipped"),
        pytest.param(_truncate, id="truncated", marks=pytest.mark.slow),
        pytest.param(_delete, id="deleted", marks=pytest.mark.slow),
    ],
)
def test_corrupt_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
    reference, tmp_path, capsys, fault
):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    fault(out / "checkpoints" / "80")
    summary = train_cli.main(["--out", str(out), *TINY, *CKPT])
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "checkpoint 80" in warnings[0] and "corrupt" in warnings[0], warnings
    assert "resuming from checkpoint 60" in warnings[0]
    assert summary["status"] == "completed"
    lines, ref_lines = _metrics(out), _metrics(reference)
    assert [x["step"] for x in lines] == [x["step"] for x in ref_lines]
    assert [x["loss"] for x in lines] == [x["loss"] for x in ref_lines]
    for a, b in zip(_params(out), _params(reference)):
        np.testing.assert_array_equal(a, b)
    # the corrupt step is out of orbax's listing, kept aside; step 80 was saved anew and checks
    moved = list((out / "checkpoints" / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("80-")
    ck = Checkpointer(out / "checkpoints", CheckpointConfig())
    assert ck.steps() == [20, 40, 60, 80] and verify_step(ck.step_dir(80)) is None
    ck.close()
    if fault is _flip:  # a second rerun finds nothing to warn about
        train_cli.main(["--out", str(out), *TINY, *CKPT])
        assert "warning" not in capsys.readouterr().err


def test_all_checkpoints_corrupt_exits_2_unless_restart_is_allowed(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for step in (20, 40, 60, 80):
        _flip(out / "checkpoints" / str(step))
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *TINY, *CKPT])
    err = capsys.readouterr().err.strip().splitlines()  # the resolved config, then one line
    assert e.value.code == 2 and "restart_if_corrupt" in err[-1] and "checkpoint 80" not in err[-2], err[-2:]
    assert not _warnings("\n".join(err)) and "Traceback" not in "\n".join(err)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing  # nothing moved
    summary = train_cli.main(["--out", str(out), *TINY, *CKPT, "--resume.restart_if_corrupt", "true"])
    assert summary["status"] == "completed"
    assert [x["loss"] for x in _metrics(out)] == [x["loss"] for x in _metrics(reference)]
    assert len(_warnings(capsys.readouterr().err)) == 4  # each corrupt step, once, as it is moved aside
    moved = sorted(p.name.split("-")[0] for p in (out / "checkpoints" / "corrupt").iterdir())
    assert moved == ["20", "40", "60", "80"]
    ck = Checkpointer(out / "checkpoints", CheckpointConfig())  # all saved anew: a rerun finds no fault
    assert ck.steps() == [20, 40, 60, 80] and all(verify_step(ck.step_dir(s)) is None for s in ck.steps())
    ck.close()


def _state(step):
    return {"w": np.full((64,), float(step), np.float32)}


@pytest.mark.parametrize("damage", ["no manifest", "unreadable manifest", "unlisted file"])
def test_a_step_without_a_checking_manifest_is_never_trusted(tmp_path, capsys, damage):
    """A kill between orbax's rename of a step and its manifest leaves a step without one: it is
    not committed. read_meta does not trust it, a restore moves it aside and falls back."""
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(keep=5))
    for step in (1, 2):
        ck.save(step, _state(step), {"step": step})
    ck.close()
    step_dir = tmp_path / "ck" / "2"
    if damage == "no manifest":
        (step_dir / MANIFEST).unlink()
    elif damage == "unreadable manifest":
        (step_dir / MANIFEST).write_text('{"files": {')
    else:
        (step_dir / "state" / "extra").write_bytes(b"x")
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(keep=5))
    assert ck.read_meta(2) is None and ck.read_meta(1) == {"step": 1}
    state, meta, step = ck.restore_latest({"w": np.zeros((64,), np.float32)})
    assert step == 1 and meta == {"step": 1} and float(state["w"][0]) == 1.0
    assert len(_warnings(capsys.readouterr().err)) == 1
    assert ck.steps() == [1] and not step_dir.exists()
    ck.save(2, _state(2), {"step": 2})  # the step number can be saved again
    ck.wait()
    assert ck.steps() == [1, 2] and verify_step(step_dir) is None
    ck.close()


def test_a_run_killed_before_its_first_save_was_committed_starts_from_scratch(tmp_path, capsys):
    """The only step lacks its manifest (a kill mid-save): nothing was committed, so a rerun
    starts afresh with one warning instead of refusing as if a good checkpoint were damaged.
    A step that is committed but damaged still refuses (test above)."""
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(keep=5))
    ck.save(1, _state(1), {"step": 1})
    ck.close()
    (tmp_path / "ck" / "1" / MANIFEST).unlink()
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(keep=5))
    assert ck.restore_latest({"w": np.zeros((64,), np.float32)}) is None
    [warning] = _warnings(capsys.readouterr().err)
    assert "never committed" in warning and "starting from scratch" in warning
    assert ck.steps() == []
    ck.save(1, _state(1), {"step": 1})
    ck.wait()
    assert ck.steps() == [1] and verify_step(ck.step_dir(1)) is None
    ck.close()


@pytest.mark.parametrize("async_save", [True, False])
def test_data_and_manifest_are_fsynced_before_the_step_counts_as_committed(tmp_path, monkeypatch, async_save):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig(async_save=async_save))
    ck.save(7, _state(7), {"step": 7})
    ck.close()
    step_dir = tmp_path / "ck" / "7"
    files = json.loads((step_dir / MANIFEST).read_text())["files"]
    assert files and set(files) == {
        str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST
    }
    manifest_at = max(i for i, p in enumerate(synced) if os.path.basename(p).startswith(f".{MANIFEST}."))
    before = set(synced[:manifest_at])
    assert {str(step_dir / rel) for rel in files} <= before  # every data file, before the manifest
    assert {str(step_dir), str(step_dir / "state"), str(tmp_path / "ck")} <= before  # and the directories
    assert str(step_dir) in synced[manifest_at + 1 :]  # the manifest's rename into place


def test_an_intact_checkpoint_of_another_state_tree_is_refused_not_moved(tmp_path):
    ck = Checkpointer(tmp_path / "ck", CheckpointConfig())
    ck.save(3, _state(3), {"step": 3})
    ck.wait()
    with pytest.raises(UsageError, match="does not fit this run's train state"):
        ck.restore_latest({"v": np.zeros((64,), np.float32)})
    assert ck.steps() == [3] and not (tmp_path / "ck" / "corrupt").exists()
    ck.close()


def test_a_checkpoint_of_other_shapes_is_refused_even_when_config_changes_are_allowed(reference, tmp_path, capsys):
    """--resume.allow_config_change lets safe fields change; an MLP of another width would be
    restored into arrays of the wrong shape, so it is refused with one line and nothing moved."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *TINY, *CKPT, "--model.d_ff", "96", "--resume.allow_config_change", "true"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("error", "warning"))]
    assert e.value.code == 2
    assert len(err) == 1 and "checkpoint 80" in err[0] and "float32[128]" in err[0] and "float32[96]" in err[0], err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_a_checkpoint_of_the_other_layer_layout_is_refused_with_the_field_to_set(reference, tmp_path, capsys):
    """A checkpoint of looped layers (h_0 .. h_{n-1}) does not restore into a scanned model
    (model.scan_layers): one line names the layouts and the setting that reads it."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with pytest.raises(SystemExit) as e:
        train_cli.main(
            ["--out", str(out), *TINY, *CKPT, "--model.scan_layers", "true", "--resume.allow_config_change", "true"]
        )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("error", "warning"))]
    assert e.value.code == 2
    assert len(err) == 1 and "looped layers" in err[0] and "model.scan_layers false" in err[0], err


def test_reading_a_run_moves_nothing_and_leaves_a_save_in_flight_alone(reference, tmp_path, capsys):
    """generate and evaluate read runs that may still be training: a corrupt step is skipped,
    not moved, and orbax's temporary directory of a save in flight is not cleaned up."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _flip(out / "checkpoints" / "80")
    in_flight = out / "checkpoints" / "100.orbax-checkpoint-tmp-1234567"
    (in_flight / "state").mkdir(parents=True)
    (in_flight / "state" / "part").write_bytes(b"being written")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    _, params = load_run(out)
    err = capsys.readouterr().err
    assert "checkpoint 80" in err and "reading checkpoint 60" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert (in_flight / "state" / "part").read_bytes() == b"being written"
    want = Checkpointer(out / "checkpoints", CheckpointConfig(), read_only=True)
    try:
        assert want.steps() == [20, 40, 60, 80]
    finally:
        want.close()
