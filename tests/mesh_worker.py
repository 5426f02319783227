"""Run 30 training steps on one mesh and report losses and shardings (used by test_sharding).

python -m tests.mesh_worker DATA,FSDP,MODEL ...  (under --xla_force_host_platform_device_count)
prints one JSON object keyed by mesh: losses, each parameter's actual and rule-table
PartitionSpec, and bytes of parameters and optimizer state per device.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import flax.linen as nn
import jax
import numpy as np

from scaling import sharding as sh
from scaling.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from scaling.data import Batches, load_tokens
from scaling.train import Trainer

STEPS = 30


def config() -> Config:
    return dataclasses.replace(
        Config(), model=ModelConfig(n_layer=2, n_head=8, d_model=64, seq_len=32, vocab_size=257),
        data=DataConfig(tokenizer="byte"), optim=OptimConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(batch_size=16, tokens=16 * 32 * STEPS))


def spec_str(spec) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def main(data: int, fsdp: int, model: int) -> dict:
    cfg = config()
    shape = sh.mesh_shape(dataclasses.replace(cfg.mesh, data=data, fsdp=fsdp, model=model), jax.device_count())
    mesh = sh.make_mesh(shape)
    trainer = Trainer(cfg, mesh, STEPS)
    state = trainer.init_state()
    batches = Batches(load_tokens(cfg.data), cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)
    losses = []
    for step in range(STEPS):
        batch = sh.make_global_batch(mesh, batches.train_batch(step), cfg.train.batch_size)
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    with sh.mesh_context(mesh):
        boxed = jax.eval_shape(trainer._init_params, jax.random.key(0))
    rule_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), sh.LOGICAL_AXIS_RULES)
    params = {}
    rules = jax.tree.leaves(rule_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (path, leaf), rule in zip(jax.tree_util.tree_leaves_with_path(state.params), rules):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        expected = jax.sharding.NamedSharding(mesh, rule)
        params[name] = {"actual": spec_str(leaf.sharding.spec), "rule": spec_str(rule),
                        "equivalent": leaf.sharding.is_equivalent_to(expected, leaf.ndim)}
    state_bytes = sh.bytes_per_device((state.params, state.opt_state))
    total = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves((state.params, state.opt_state))))
    return {"losses": losses, "params": params, "state_bytes_max": max(state_bytes.values()),
            "total_state_bytes": total}


if __name__ == "__main__":
    print(json.dumps({m: main(*map(int, m.split(","))) for m in sys.argv[1:]}))
