"""Pipeline parallelism (``--mesh.stage``) through the real training CLI on 8 forced host devices:
30 steps on each pipelined mesh give the one-device run's losses within 1e-4 (relative);
checkpoints saved with stages resume on one device and the other way round; two processes of
four devices, with the stages on different processes, train as one; bad pipeline settings are
refused up front with one line and exit code 2.

The runs of one device count share a worker process (``tests/mesh_worker.py``: imports paid
once), the one-device and eight-device workers side by side. Every training run compiles a
pipelined step (tens of CPU-seconds for the lot), so those tests are slow; the default tier
checks the refusals (one worker) and the row bookkeeping.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.train.microbatch import split_rows
from scaling.train.pipeline import merge_rows
from tests.helpers import data_path, run_cli, train_in_two_processes
from tests.mesh_worker import losses as metrics_losses

STEPS, BATCH, SEQ = 30, 8, 32
CKPT_STEP = 15

MESHES = {
    "stage4-data2": ["--mesh.stage", "4", "--mesh.data", "2"],
    "stage2-model2-data2": ["--mesh.stage", "2", "--mesh.model", "2", "--mesh.data", "2"],
    "stage2-fsdp2-model2": ["--mesh.stage", "2", "--mesh.fsdp", "2", "--mesh.model", "2", "--mesh.data", "1"],
    "circular-stage2-model2-data2": [
        *("--mesh.stage", "2", "--mesh.model", "2", "--mesh.data", "2"),
        *("--mesh.pipeline_schedule", "circular", "--mesh.pipeline_microbatches", "4"),
    ],
}


def base_args(steps: int = STEPS) -> list[str]:
    return [
        *("--data.corpus", str(data_path("tinyshakespeare", "input.txt")), "--data.tokenizer", "byte"),
        *("--model.n_layer", "4", "--model.n_head", "2", "--model.d_model", "32", "--model.seq_len", str(SEQ)),
        *("--model.scan_layers", "true", "--train.batch_size", str(BATCH), "--train.tokens", str(steps * BATCH * SEQ)),
        *("--train.log_every", "1", "--train.eval_batches", "1", "--train.progress", "false"),
        *("--optim.lr", "3e-3", "--optim.warmup_steps", "3"),
        *("--checkpoint.every_steps", str(CKPT_STEP), "--checkpoint.keep", "4"),
    ]


def _run_worker(runs: list[dict], path, devices: int) -> dict:
    path.write_text(json.dumps(runs, default=str))
    proc = run_cli("tests.mesh_worker", "cli", path, devices=devices, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _workers(one: list[dict], eight: list[dict], tmp) -> dict:
    """The runs of a one-device worker and an eight-device worker, side by side, by name."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(_run_worker, runs, tmp / f"{name}.json", n)
            for name, runs, n in (("one", one, 1), ("eight", eight, 8))
            if runs
        ]
        return {k: v for f in futures for k, v in f.result().items()}


def _resumable_copy(src, dest) -> None:
    """``src``'s run directory as it was at step CKPT_STEP (later checkpoints removed)."""
    shutil.copytree(src, dest)
    for d in (dest / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > CKPT_STEP:
            shutil.rmtree(d)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Phase 1: the one-device run and each pipelined mesh. Phase 2: the one-device run resumed
    from stage4-data2's checkpoint at step CKPT_STEP on (stage 2, model 2, data 2), and
    stage2-model2-data2's resumed on one device."""
    tmp = tmp_path_factory.mktemp("pipeline")
    one = [{"name": "one", "argv": ["--out", tmp / "one", *base_args()]}]
    eight = [{"name": k, "argv": ["--out", tmp / k, *base_args(), *v]} for k, v in MESHES.items()]
    got = _workers(one, eight, tmp)
    if got["one"]["code"] == 0 and all(got[k]["code"] == 0 for k in ("stage4-data2", "stage2-model2-data2")):
        _resumable_copy(tmp / "one", tmp / "one-to-stages")
        _resumable_copy(tmp / "stage2-model2-data2", tmp / "stages-to-one")
        back = [{"name": "stages-to-one", "argv": ["--out", tmp / "stages-to-one", *base_args()]}]
        there = [
            {
                "name": "one-to-stages",
                "argv": ["--out", tmp / "one-to-stages", *base_args(), *MESHES["stage2-model2-data2"]],
            }
        ]
        got |= _workers(back, there, tmp)
    return got


def _ok(run: dict) -> list[float]:
    assert run["code"] == 0, "\n".join(run["stderr"][-30:])
    return run["losses"]


@pytest.mark.slow  # five CLI runs of 30 steps, each compiling its own (pipelined) step
@pytest.mark.parametrize("mesh", list(MESHES))
def test_pipelined_mesh_gives_the_one_device_losses(runs, mesh):
    ref = _ok(runs["one"])
    assert len(ref) == STEPS and ref[-1] < ref[0] - 0.5
    got = runs[mesh]
    np.testing.assert_allclose(_ok(got), ref, rtol=1e-4)
    stage = int(MESHES[mesh][1])
    assert got["summary"]["mesh"]["stage"] == stage and got["summary"]["n_devices"] == 8
    # the layers are split over the stages: each device holds less than all of them
    assert got["summary"]["param_bytes_per_device"] < runs["one"]["summary"]["param_bytes_per_device"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stages-to-one", "one-to-stages"])
def test_checkpoint_restores_across_pipeline_layouts(runs, name):
    """Saved at step 15 with stages and resumed on one device, and the other way round: the
    resumed steps give the uninterrupted run's losses."""
    ref = _ok(runs["one"])
    got = runs.get(name)
    assert got is not None, "the runs the resumes start from failed"
    losses = _ok(got)
    assert len(losses) == STEPS  # metrics of steps 1..15 kept from before, 16..30 appended
    np.testing.assert_allclose(losses, ref, rtol=1e-4)


@pytest.mark.slow
def test_two_processes_with_stages_across_them_train_as_one(runs, tmp_path):
    """Two local processes of 4 CPU devices (gloo): stage 0 on process 0's devices, stage 1 on
    process 1's, activations passed between the processes; losses as the one-device run's."""
    mesh = ["--mesh.stage", "2", "--mesh.model", "2", "--mesh.data", "2"]
    argv = ["--out", tmp_path / "multi", *base_args(), *mesh]
    train_in_two_processes(*argv, timeout=900)
    np.testing.assert_allclose(metrics_losses(tmp_path / "multi"), _ok(runs["one"]), rtol=1e-4)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n_processes"] == 2 and summary["n_devices"] == 8
    assert summary["mesh"] == {"stage": 2, "data": 2, "fsdp": 1, "model": 2}


REFUSALS = {
    "looped layers": (["--model.scan_layers", "false", "--mesh.stage", "2"], "needs model.scan_layers true"),
    "layers": (["--mesh.stage", "8"], "model.n_layer (4) is not divisible by mesh.stage (8)"),
    "repeats": (
        ["--mesh.stage", "2", "--mesh.pipeline_schedule", "circular", "--mesh.pipeline_repeats", "4"],
        "model.n_layer (4) is not divisible by mesh.stage (2) x mesh.pipeline_repeats (4)",
    ),
    "batch": (
        ["--mesh.stage", "2", "--mesh.pipeline_microbatches", "3"],
        "not divisible by mesh.pipeline_microbatches",
    ),
    "data axes": (
        ["--mesh.stage", "2", "--mesh.data", "4", "--mesh.pipeline_microbatches", "4"],
        "times the data axes (mesh.data * mesh.fsdp = 4)",
    ),
    "circular": (
        ["--mesh.stage", "2", "--mesh.pipeline_schedule", "circular", "--mesh.pipeline_microbatches", "1"],
        "the circular schedule needs mesh.pipeline_microbatches (1) >= mesh.stage (2)",
    ),
    "devices": (["--mesh.stage", "3"], "does not divide the 8 devices"),
    "schedule": (["--mesh.stage", "2", "--mesh.pipeline_schedule", "1f1b"], "must be gpipe or circular"),
}


def test_bad_pipeline_settings_are_refused_with_one_line_and_exit_2(tmp_path):
    runs = [
        {"name": k, "argv": ["--out", tmp_path / k.replace(" ", "-"), *base_args(), *argv]}
        for k, (argv, _) in REFUSALS.items()
    ]
    got = _run_worker(runs, tmp_path / "refusals.json", 8)
    for name, (_, message) in REFUSALS.items():
        r = got[name]
        assert r["code"] == 2, (name, r["stderr"][-20:])
        assert len(r["stderr"]) == 1 and r["stderr"][0].startswith("error: ") and message in r["stderr"][0], r
        assert not r["out_exists"]  # refused before anything was written


def test_merge_rows_inverts_split_rows():
    batch = jnp.arange(24).reshape(12, 2)
    micro = split_rows(batch, 4)
    assert micro.shape == (4, 3, 2) and micro[1, :, 0].tolist() == [2, 10, 18]  # rows 1, 5, 9
    assert jax.numpy.array_equal(merge_rows(micro), batch)
