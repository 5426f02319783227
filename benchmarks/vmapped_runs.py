"""Several runs of one shape as one vmapped program, against the same runs stepped in turn.

    python -m benchmarks.vmapped_runs [--shapes 32x2,48x2,64x3,80x4] [--runs 2] [--batch 8]
                                      [--seq 128] [--windows 5] [--steps 20]
                                      [--out benchmarks/results/vmapped_runs_cpu.json]

A sweep trains many runs of one shape that differ only in values the compiled step takes as
arguments (seeds, learning-rate scan points, cooldown branches): K of them could advance as
one program, ``jax.vmap`` of the product's train step over K stacked states, batches and run
arguments. For each shape (d_model x n_layer, head size 16, rotary positions, the default
sweep's batch and context) this times, alternating in one process, K steps of the product's
compiled step (one per run, in turn) against one step of the vmapped program, and reports
tokens/s of both and their ratio (above 1: the vmapped program trains the K runs faster).
The vmapped step is jitted with the state donated, as the product's is; its first step checks
that each run's loss equals the same run stepped alone.

A third column times one step of the product's step on a K times larger batch: the most that
merging K runs' work into larger operations could give at this shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.record import write_result
from scaling import flops as flops_lib
from scaling import host_memory
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig
from scaling.sharding import make_mesh, mesh_shape
from scaling.train import Trainer
from scaling.train import step as step_lib


def _config(d: int, n_layer: int, batch: int, seq: int) -> Config:
    model = ModelConfig(n_layer=n_layer, d_model=d, n_head=d // 16, seq_len=seq, vocab_size=257, position="rotary")
    return dataclasses.replace(
        Config(),
        model=model,
        optim=OptimConfig(warmup_steps=10, schedule="wsd", beta2=0.99),
        train=TrainConfig(batch_size=batch, tokens=10**9),
    )


def _window(fn, steps: int) -> float:
    t0 = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t0


def measure(d: int, n_layer: int, runs: int, batch: int, seq: int, windows: int, steps: int) -> dict:
    cfg = _config(d, n_layer, batch, seq)
    mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
    rng = np.random.default_rng(0)
    batches = jnp.asarray(rng.integers(0, 257, (runs, batch, seq + 1), dtype=np.int32))

    first = Trainer(cfg, mesh, 10**6)
    seeded = [dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=k)) for k in range(runs)]
    trainers = [first.for_run(c, 10**6) for c in seeded]  # K runs sharing one compiled step
    singles = {"states": [t.init_state() for t in trainers]}

    def in_turn(n):
        m = None
        for _ in range(n):
            for k, t in enumerate(trainers):
                singles["states"][k], m = t.train_step(singles["states"][k], batches[k])
        jax.block_until_ready(m)

    t0 = trainers[0]
    step = functools.partial(step_lib.train_step, t0.model, t0.tx, cfg.optim, t0.microbatches, objective=t0.objective)
    vstep = jax.jit(jax.vmap(step), donate_argnums=0)
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    vm = {"state": stack([t.init_state() for t in trainers])}
    run_args = stack([t.run_args for t in trainers])
    t_compile = time.perf_counter()
    vm["state"], metrics = vstep(vm["state"], batches, run_args)
    compile_s = time.perf_counter() - t_compile
    alone = [t.train_step(t.init_state(), batches[k])[1]["loss"] for k, t in enumerate(trainers)]
    max_diff = float(np.max(np.abs(np.asarray(metrics["loss"]) - np.asarray(alone))))

    def vmapped(n):
        m = None
        for _ in range(n):
            vm["state"], m = vstep(vm["state"], batches, run_args)
        jax.block_until_ready(m)

    big_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch * runs))
    big = Trainer(big_cfg, mesh, 10**6)
    big_batch = batches.reshape(runs * batch, seq + 1)
    bg = {"state": big.init_state()}

    def larger_batch(n):
        m = None
        for _ in range(n):
            bg["state"], m = big.train_step(bg["state"], big_batch)
        jax.block_until_ready(m)

    for fn in (in_turn, vmapped, larger_batch):
        fn(2)  # warm up
    times = {"in_turn": [], "vmapped": [], "larger_batch": []}
    for _ in range(windows):  # alternate, so that all three see the same machine
        for name, fn in (("in_turn", in_turn), ("vmapped", vmapped), ("larger_batch", larger_batch)):
            times[name].append(_window(fn, steps))
    tokens = runs * batch * seq * steps
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["in_turn"], times["vmapped"])]
    return {
        "shape": f"{d}x{n_layer}",
        "n_params": flops_lib.param_counts(cfg.model)["n_params"],
        "microbatches": t0.microbatches,
        "tokens_per_s": rate,
        "vmapped_over_in_turn": statistics.median(ratios),
        "vmapped_over_in_turn_windows": ratios,
        "larger_batch_over_in_turn": rate["larger_batch"] / rate["in_turn"],
        "vmapped_compile_s": compile_s,
        "first_step_max_loss_diff": max_diff,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="32x2,48x2,64x3,80x4", help="d_model x n_layer, comma separated")
    p.add_argument("--runs", type=int, default=2, help="runs of each shape (K)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps of each run per timed window")
    p.add_argument("--out", default="benchmarks/results/vmapped_runs_cpu.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    rows = []
    for shape in args.shapes.split(","):
        d, n_layer = map(int, shape.split("x"))
        rows.append(measure(d, n_layer, args.runs, args.batch, args.seq, args.windows, args.steps))
    print(f"{args.runs} runs per shape, batch {args.batch} x context {args.seq}, {jax.default_backend()}")
    print(f"{'shape':>6} {'in turn tok/s':>14} {'vmapped tok/s':>14} {'vmapped/in turn':>16} {'batch x K/in turn':>18}")
    for r in rows:
        t = r["tokens_per_s"]
        print(
            f"{r['shape']:>6} {t['in_turn']:>14.0f} {t['vmapped']:>14.0f} {r['vmapped_over_in_turn']:>16.2f} "
            f"{r['larger_batch_over_in_turn']:>18.2f}"
        )
    result = {"runs": args.runs, "batch": args.batch, "seq_len": args.seq, "steps": args.steps, "rows": rows}
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
