"""Every mesh x training attention x head size through the real training CLI, on 8 forced
host devices: each combination either gives the one-device losses within 1e-4 (relative),
or is refused up front with one line on stderr and exit code 2 naming what cannot run.

Meshes (data, fsdp, model): (2, 1, 4), (2, 2, 2), (1, 8, 1), (1, 1, 8), (8, 1, 1). The model
keeps d_model 64, so head sizes 8, 16 and 32 mean 8, 4 and 2 heads: the C++ kernel does not
take head size 8, and 4 or 2 heads cannot be split over a model axis of 8 (or 2 over 4).

The combinations run a few steps of a one-layer model, grouped into a few processes that
each call ``experiments.train.main`` once per combination (``tests/mesh_worker.py``); the
one-device references run once per test session, beside them, and only the combinations
the session selected run at all. Each compiles its own programs (about 5 CPU-s), so the
default run takes a slice at one head size (16 where it trains, else 8): every refusal, each
mesh with ``auto`` (the default attention), and ``blocked`` and ``dot_product`` on the mesh
of all three axes; the rest is marked slow. A few true command-line runs, on one process and
on two, check the same in processes of their own.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json

import numpy as np
import pytest

from scaling.config import CPU_KERNEL_HEAD_DIMS
from scaling.model import cpu_attention
from tests.helpers import data_path, run_cli, train_in_two_processes
from tests.mesh_worker import losses as metrics_losses

MESHES = {
    "data2-model4": (2, 1, 4),
    "data2-fsdp2-model2": (2, 2, 2),
    "fsdp8": (1, 8, 1),
    "model8": (1, 1, 8),
    "data8": (8, 1, 1),
}
ATTENTIONS = ("cpu_kernel", "blocked", "dot_product", "auto")  # auto last: it reuses what its kernel compiled
HEAD_SIZES = (8, 16, 32)
D_MODEL, STEPS, BATCH, SEQ = 64, 3, 8, 128  # seq 128: the blocked kernel takes two query blocks


def base_args(attention: str, head_size: int) -> list[str]:
    return [
        "--data.corpus",
        str(data_path("tinyshakespeare", "input.txt")),
        "--data.tokenizer",
        "byte",
        "--model.n_layer",
        "1",
        "--model.d_model",
        str(D_MODEL),
        "--model.n_head",
        str(D_MODEL // head_size),
        "--model.seq_len",
        str(SEQ),
        "--model.attention",
        attention,
        "--train.batch_size",
        str(BATCH),
        "--train.tokens",
        str(STEPS * BATCH * SEQ),
        "--train.log_every",
        "1",
        "--train.eval_batches",
        "1",
        "--train.progress",
        "false",
        "--optim.lr",
        "3e-3",
        "--optim.warmup_steps",
        "1",
    ]


def mesh_args(mesh: str) -> list[str]:
    data, fsdp, model = MESHES[mesh]
    return ["--mesh.data", str(data), "--mesh.fsdp", str(fsdp), "--mesh.model", str(model)]


def _shape_refusal(mesh: str | None, attention: str, head_size: int) -> str | None:
    n_head, model = D_MODEL // head_size, MESHES[mesh][2] if mesh else 1
    if attention == "cpu_kernel" and head_size not in CPU_KERNEL_HEAD_DIMS:
        return "model.attention=cpu_kernel needs model.dtype float32 and a head size"
    if n_head % model:
        return f"model.n_head ({n_head}) is not divisible by mesh.model ({model})"
    return None


def refusal(mesh: str | None, attention: str, head_size: int) -> str | None:
    """What the one-line refusal of this combination must say, or None where it must train
    (``mesh`` None: one device)."""
    reason = _shape_refusal(mesh, attention, head_size)
    if reason is None and attention == "cpu_kernel" and cpu_attention.unavailable() is not None:
        return "model.attention=cpu_kernel is unavailable"
    return reason


ALL_AXES = "data2-fsdp2-model2"
"""The mesh on which the default run trains every attention, not only ``auto``."""


def in_default_run(mesh: str, attention: str, head_size: int) -> bool:
    """Every refusal; at the first of head sizes 16, 8, 32 where it trains, each mesh with
    ``auto`` and ``ALL_AXES`` with ``blocked`` and ``dot_product`` too. An explicit
    ``cpu_kernel`` that trains only under ``-m slow``: on a CPU, ``auto`` at head size 16 runs
    the same kernel on the same mesh in the default run."""
    if _shape_refusal(mesh, attention, head_size) is not None:
        return True
    if attention == "cpu_kernel" or (attention != "auto" and mesh != ALL_AXES):
        return False
    return head_size == next((h for h in (16, 8, 32) if _shape_refusal(mesh, attention, h) is None), None)


COMBINATIONS = [
    pytest.param(m, a, hd, marks=() if in_default_run(m, a, hd) else pytest.mark.slow)
    for m, a, hd in itertools.product(MESHES, ATTENTIONS, HEAD_SIZES)
]


def _run_worker(runs: list[dict], path, devices: int) -> dict:
    if not runs:
        return {}
    path.write_text(json.dumps(runs))
    proc = run_cli("tests.mesh_worker", "cli", path, devices=devices, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _name(key: tuple) -> str:
    return "/".join(map(str, key))


def _selected(session) -> tuple[list[tuple], list[tuple]]:
    """The combinations the selected tests of this pytest run look at, and the one-device references
    they need: (mesh, attention, head size) and (attention, head size), auto after its kernel."""
    combos, refs = [], {("auto", 16)}  # (auto, 16): the command-line runs' reference
    for item in session.items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if item.originalname == test_mesh_gives_the_one_device_losses_or_is_refused_up_front.__name__:
            combos.append((params["mesh"], params["attention"], params["head_size"]))
            if refusal(*combos[-1]) is None:
                refs.add(combos[-1][1:])
        elif item.originalname == test_the_attention_kernels_agree_on_one_device.__name__:
            refs.update((a, params["head_size"]) for a in ATTENTIONS)
    return combos, sorted((k for k in refs if refusal(None, *k) is None), key=_run_order)


def _run_order(key: tuple) -> tuple:
    """Head size, then attention in ATTENTIONS' order (auto after the kernel it resolves to)."""
    return key[-1], ATTENTIONS.index(key[-2])


def _split(combos: list[tuple], n: int) -> list[list[tuple]]:
    """``n`` groups of whole meshes (auto then follows its kernel in one process), the
    combinations that train spread evenly."""
    groups: list[list[tuple]] = [[] for _ in range(n)]
    load = [0] * n
    by_mesh = {m: [c for c in combos if c[0] == m] for m in MESHES}
    for m in sorted(by_mesh, key=lambda m: -sum(refusal(*c) is None for c in by_mesh[m])):
        i = load.index(min(load))
        groups[i] += sorted(by_mesh[m], key=_run_order)
        load[i] += sum(refusal(*c) is None for c in by_mesh[m])
    return [g for g in groups if g]


@pytest.fixture(scope="session")
def matrix(request, tmp_path_factory) -> tuple[dict, dict]:
    """(one-device runs keyed by (attention, head size), 8-device runs keyed by (mesh, attention,
    head size)), from a worker process of one device and two of eight, all at once."""
    tmp = tmp_path_factory.mktemp("mesh-matrix")
    cpu_attention.unavailable()  # build the kernel once, before the workers load it
    combos, refs = _selected(request.session)

    def spec(key: tuple, extra: list[str]) -> dict:
        argv = ["--out", str(tmp.joinpath(*map(str, key))), *base_args(*key[-2:]), *extra]
        return {"name": _name(key), "argv": argv}

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        one = pool.submit(_run_worker, [spec(k, []) for k in refs], tmp / "one.json", 1)
        eight = [
            pool.submit(_run_worker, [spec(k, mesh_args(k[0])) for k in g], tmp / f"eight-{i}.json", 8)
            for i, g in enumerate(_split(combos, 2))
        ]
        by_name = {**one.result(), **{k: v for f in eight for k, v in f.result().items()}}
    return {k: by_name[_name(k)] for k in refs}, {k: by_name[_name(k)] for k in combos}


def _reference(matrix, attention: str, head_size: int) -> dict:
    ref = matrix[0][(attention, head_size)]
    assert ref["code"] == 0, ref["stderr"][-20:]
    assert len(ref["losses"]) == STEPS and ref["losses"][-1] < ref["losses"][0]
    return ref


@pytest.mark.parametrize("mesh,attention,head_size", COMBINATIONS)
def test_mesh_gives_the_one_device_losses_or_is_refused_up_front(matrix, mesh, attention, head_size):
    got = matrix[1][(mesh, attention, head_size)]
    reason = refusal(mesh, attention, head_size)
    if reason is not None:
        assert got["code"] == 2, got["stderr"][-20:]
        assert len(got["stderr"]) == 1 and got["stderr"][0].startswith("error: "), got["stderr"]
        assert reason in got["stderr"][0]
        assert not got["out_exists"]  # refused before anything was written
        return
    assert got["code"] == 0, "\n".join(got["stderr"][-30:])
    ref = _reference(matrix, attention, head_size)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-4)
    data, fsdp, model = MESHES[mesh]
    assert got["summary"]["mesh"] == {"data": data, "fsdp": fsdp, "model": model}
    assert got["summary"]["n_devices"] == 8
    # parameters are split over fsdp and model, replicated over data
    one_device, split = ref["summary"]["param_bytes_per_device"], got["summary"]["param_bytes_per_device"]
    assert split == one_device if fsdp * model == 1 else split < one_device


@pytest.mark.parametrize(
    "head_size", [16, pytest.param(8, marks=pytest.mark.slow), pytest.param(32, marks=pytest.mark.slow)]
)
def test_the_attention_kernels_agree_on_one_device(matrix, head_size):
    runs = [_reference(matrix, a, head_size)["losses"] for a in ATTENTIONS if refusal(None, a, head_size) is None]
    assert len(runs) >= 3
    for losses in runs[1:]:
        np.testing.assert_allclose(losses, runs[0], rtol=1e-4)


def test_tensor_parallel_cli_run_matches_one_device(matrix, tmp_path):
    """A command-line run of its own on (data 2, model 4) with 4 heads of 16 (on a CPU with a
    compiler: the C++ kernel under shard_map): its init once failed on the batch-1 sample."""
    r = run_cli(
        "experiments.train",
        "--out",
        tmp_path / "tp",
        *base_args("auto", 16),
        *mesh_args("data2-model4"),
        devices=8,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(metrics_losses(tmp_path / "tp"), _reference(matrix, "auto", 16)["losses"], rtol=1e-4)


@pytest.mark.parametrize("attention,head_size,mesh", [("cpu_kernel", 8, "data2-model4"), ("auto", 32, "model8")])
def test_cli_refusal_is_one_line_and_exit_2(tmp_path, attention, head_size, mesh):
    r = run_cli(
        "experiments.train", "--out", tmp_path / "run", *base_args(attention, head_size), *mesh_args(mesh), devices=8
    )
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and refusal(mesh, attention, head_size) in lines[0]
    assert not (tmp_path / "run").exists()


def test_two_processes_of_four_devices_match_one_device(matrix, tmp_path):
    """The README's multi-host form (--mesh.data -1 --mesh.model 4, one command per process)
    as two local processes of 4 CPU devices each, joined on 127.0.0.1 with gloo collectives."""
    argv = ["--out", tmp_path / "multi", *base_args("auto", 16), "--mesh.data", "-1", "--mesh.model", "4"]
    train_in_two_processes(*argv, timeout=600)
    np.testing.assert_allclose(metrics_losses(tmp_path / "multi"), _reference(matrix, "auto", 16)["losses"], rtol=1e-4)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n_processes"] == 2 and summary["n_devices"] == 8
    assert summary["mesh"] == {"data": 2, "fsdp": 1, "model": 4}
