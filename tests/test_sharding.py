"""Sharded training through ``Trainer``: the rule table's shardings on every mesh, FSDP memory,
and the losses of a mesh outside tests/test_mesh_matrix.py's (which runs the command line on
the others, and over two processes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_cli
from tests.mesh_worker import STEPS
from tests.mesh_worker import main as train_on_mesh

# (2, 2, 2) puts every rule of the table on a mesh axis of its own; (1, 8, 1) and (8, 1, 1) are
# FSDP's memory case and its replicated contrast; (1, 4, 2) trains here only; "scan" is
# (2, 2, 2) with model.scan_layers. The other meshes train through the CLI in test_mesh_matrix.py.
MESHES = ["1,4,2", "2,2,2", "1,8,1", "8,1,1", "2,2,2,scan"]

# Megatron layout by hand: (parameter suffix) -> PartitionSpec as (data, fsdp, model) names.
MEGATRON = {
    "attn/qkv_kernel": ["fsdp", None, "model", None],  # columns (heads) split
    "attn/out_kernel": ["model", None, "fsdp"],  # rows (heads) split
    "mlp/fc/kernel": ["fsdp", "model"],  # columns split
    "mlp/proj/kernel": ["model", "fsdp"],  # rows split
    "wte/embedding": ["model", "fsdp"],  # vocabulary split
    "ln_1/scale": [None],
}


@pytest.fixture(scope="module")
def results():
    r = run_cli("tests.mesh_worker", *MESHES, devices=8, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["1,1,1"] = train_on_mesh(1, 1, 1)
    out["1,1,1,scan"] = train_on_mesh(1, 1, 1, scan=True)
    return out


def test_fsdp4_model2_losses_equal_the_single_device_run(results):
    ref = results["1,1,1"]["losses"]
    assert len(ref) == STEPS and ref[-1] < ref[0]
    np.testing.assert_allclose(results["1,4,2"]["losses"], ref, rtol=1e-4)


def test_scanned_layers_on_a_mesh_train_as_on_one_device(results):
    ref = results["1,1,1,scan"]["losses"]
    assert len(ref) == STEPS and ref[-1] < ref[0]
    np.testing.assert_allclose(results["2,2,2,scan"]["losses"], ref, rtol=1e-4)


@pytest.mark.parametrize("mesh", MESHES)
def test_every_parameter_is_sharded_as_the_rule_table_says(results, mesh):
    params = results[mesh]["params"]
    assert len(params) > 10
    for name, p in params.items():
        assert p["equivalent"], (mesh, name, p)
        rule = p["rule"]
        if name.startswith("h/"):  # scanned: the stacked layers axis first, over the pipeline stages (one here)
            assert rule[0] == "stage", (name, rule)
            rule = rule[1:]
        for suffix, spec in MEGATRON.items():
            if name.endswith(suffix):
                assert rule == spec, (name, rule)


def test_fsdp_divides_parameter_and_optimizer_bytes(results):
    full = results["1,1,1"]["state_bytes_max"]
    assert full == results["1,1,1"]["total_state_bytes"]
    k, per_device = 8, results["1,8,1"]["state_bytes_max"]
    # norms and a few small vectors stay replicated: allow 10% above the ideal 1/k
    assert full / k <= per_device <= 1.1 * full / k, (k, per_device, full / k)
    assert results["8,1,1"]["state_bytes_max"] == full  # pure data parallel replicates
