"""Multi-device work for the sharding tests, run in a subprocess with forced host devices.

python -m tests.mesh_worker cli RUNS.json
    runs each ``{"name", "argv"}`` of RUNS.json through the real ``experiments.train.main`` in
    this one process (start-up and imports paid once; JAX's persistent compilation cache on,
    so a run whose programs another run compiled already, ``auto`` and the kernel it resolves
    to, does not compile them again) and prints one JSON object keyed by name: the exit code,
    the stderr lines, the per-step losses of metrics.jsonl, a few summary fields and the CPU
    seconds the run took.
python -m tests.mesh_worker DATA,FSDP,MODEL[,scan] ...
    a few steps on each mesh through ``Trainer`` (``scan``: with ``model.scan_layers``), printing
    the losses, each parameter's actual and rule-table PartitionSpec, and the bytes of parameters
    and optimizer state per device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import resource
import sys
import traceback
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from experiments import train as train_cli
from scaling import compile_cache
from scaling import sharding as sh
from scaling.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from scaling.data import Batches, load_tokens
from scaling.train import Trainer

STEPS = 3
SUMMARY_FIELDS = ("mesh", "n_devices", "param_bytes_per_device")


def losses(out: Path) -> list[float]:
    """The per-step training losses of a run directory's metrics.jsonl."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def run_train_cli(argv: list[str]) -> dict:
    """``experiments.train.main(argv)`` in this process: exit code, stderr lines, losses and
    summary fields. A traceback (what the tests look for) comes back as exit code 1 with its text."""
    err = io.StringIO()
    code, summary, cpu0 = 0, None, _cpu_s()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            summary = train_cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 -- a crash of this combination, for the test to fail on; the others go on
            traceback.print_exc(file=err)
            code = 1
    out = Path(argv[argv.index("--out") + 1])
    return {
        "code": code,
        "stderr": err.getvalue().splitlines(),
        "out_exists": out.exists(),
        "losses": losses(out) if code == 0 else None,
        "summary": {k: summary[k] for k in SUMMARY_FIELDS} if code == 0 else None,
        "cpu_s": _cpu_s() - cpu0,
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def config() -> Config:
    return dataclasses.replace(
        Config(),
        model=ModelConfig(n_layer=2, n_head=8, d_model=64, seq_len=32, vocab_size=257),
        data=DataConfig(tokenizer="byte"),
        optim=OptimConfig(lr=3e-3, warmup_steps=1),
        train=TrainConfig(batch_size=16, tokens=16 * 32 * STEPS),
    )


def spec_str(spec) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def main(data: int, fsdp: int, model: int, scan: bool = False) -> dict:
    cfg = config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=scan))
    shape = sh.mesh_shape(dataclasses.replace(cfg.mesh, data=data, fsdp=fsdp, model=model), jax.device_count())
    mesh = sh.make_mesh(shape)
    trainer = Trainer(cfg, mesh, STEPS)
    state = trainer.init_state()
    batches = Batches(load_tokens(cfg.data), cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)
    step_losses = []
    for step in range(STEPS):
        batch = sh.make_global_batch(mesh, batches.train_batch(step), cfg.train.batch_size)
        state, metrics = trainer.train_step(state, batch)
        step_losses.append(float(metrics["loss"]))
    with sh.mesh_context(mesh):
        boxed = jax.eval_shape(trainer._init_params, jax.random.key(0))
    rule_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), sh.LOGICAL_AXIS_RULES)
    params = {}
    rules = jax.tree.leaves(rule_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (path, leaf), rule in zip(jax.tree_util.tree_leaves_with_path(state.params), rules):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        expected = jax.sharding.NamedSharding(mesh, rule)
        params[name] = {
            "actual": spec_str(leaf.sharding.spec),
            "rule": spec_str(rule),
            "equivalent": leaf.sharding.is_equivalent_to(expected, leaf.ndim),
        }
    state_bytes = sh.bytes_per_device((state.params, state.opt_state))
    total = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves((state.params, state.opt_state))))
    return {
        "losses": step_losses,
        "params": params,
        "state_bytes_max": max(state_bytes.values()),
        "total_state_bytes": total,
    }


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        compile_cache.enable()
        runs = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps({r["name"]: run_train_cli(r["argv"]) for r in runs}))
    else:
        print(json.dumps({m: main(*map(int, m.split(",")[:3]), scan=m.endswith(",scan")) for m in sys.argv[1:]}))
