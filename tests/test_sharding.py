"""Sharded training: equal losses on every mesh, the rule table's shardings, FSDP memory,
multi-process runs joined by jax.distributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, TINY, run_cli
from tests.mesh_worker import main as train_on_mesh

MESHES = ["8,1,1", "1,1,8", "2,1,4", "1,4,2", "2,2,2", "1,8,1"]

# Megatron layout by hand: (parameter suffix) -> PartitionSpec as (data, fsdp, model) names.
MEGATRON = {
    "attn/qkv_kernel": ["fsdp", None, "model", None],   # columns (heads) split
    "attn/out_kernel": ["model", None, "fsdp"],         # rows (heads) split
    "mlp/fc/kernel": ["fsdp", "model"],                 # columns split
    "mlp/proj/kernel": ["model", "fsdp"],               # rows split
    "wte/embedding": ["model", "fsdp"],                 # vocabulary split
    "ln_1/scale": [None],
}


@pytest.fixture(scope="module")
def results():
    r = run_cli("tests.mesh_worker", *MESHES, devices=8, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["1,1,1"] = train_on_mesh(1, 1, 1)
    return out


@pytest.mark.parametrize("mesh", MESHES[:5])
def test_losses_equal_the_single_device_run(results, mesh):
    ref = results["1,1,1"]["losses"]
    assert len(ref) == 30 and ref[-1] < ref[0] - 1.0
    np.testing.assert_allclose(results[mesh]["losses"], ref, rtol=1e-4)


@pytest.mark.parametrize("mesh", MESHES)
def test_every_parameter_is_sharded_as_the_rule_table_says(results, mesh):
    params = results[mesh]["params"]
    assert len(params) > 10
    for name, p in params.items():
        assert p["equivalent"], (mesh, name, p)
        for suffix, spec in MEGATRON.items():
            if name.endswith(suffix):
                assert p["rule"] == spec, (name, p["rule"])


def test_fsdp_divides_parameter_and_optimizer_bytes(results):
    full = results["1,1,1"]["state_bytes_max"]
    assert full == results["1,1,1"]["total_state_bytes"]
    k, per_device = 8, results["1,8,1"]["state_bytes_max"]
    # norms and a few small vectors stay replicated: allow 10% above the ideal 1/k
    assert full / k <= per_device <= 1.1 * full / k, (k, per_device, full / k)
    assert results["8,1,1"]["state_bytes_max"] == full  # pure data parallel replicates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_cli_on_a_data2_model4_mesh_matches_one_device_and_two_processes(tmp_path):
    args = [*TINY, "--model.n_head", "4", "--train.tokens", str(30 * 8 * 32), "--train.log_every", "1",
            "--checkpoint.every_steps", "15"]
    one = run_cli("experiments.train", "--out", tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr
    eight = run_cli("experiments.train", "--out", tmp_path / "eight", *args, "--mesh.data", "2",
                    "--mesh.model", "4", devices=8)
    assert eight.returncode == 0, eight.stderr
    ref = _losses(tmp_path / "one")
    assert len(ref) == 30
    np.testing.assert_allclose(_losses(tmp_path / "eight"), ref, rtol=1e-4)
    summary = json.loads((tmp_path / "eight" / "summary.json").read_text())
    assert summary["mesh"] == {"data": 2, "fsdp": 1, "model": 4} and summary["n_devices"] == 8
    assert summary["param_bytes_per_device"] < json.loads((tmp_path / "one" / "summary.json").read_text())[
        "param_bytes_per_device"]

    # two processes with 4 CPU devices each, joined on 127.0.0.1 with gloo collectives
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.train", "--out", str(tmp_path / "multi"), *args,
                               "--mesh.data", "2", "--mesh.model", "4", "--dist.coordinator", f"127.0.0.1:{port}",
                               "--dist.num_processes", "2", "--dist.process_id", str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "eight"), rtol=1e-4)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n_processes"] == 2 and summary["n_devices"] == 8
