"""The pipeline's bubble: time per step against microbatch count, next to (p - 1) / (m * r + p - 1).

    python benchmarks/pipeline_bubble.py [--stages 4] [--microbatches 1,2,4,8] [--windows 5]
                                         [--batch 128] [--quick] [--out benchmarks/results/pipeline_bubble_cpu.json]

On ``--stages`` forced CPU devices (one mesh axis, ``stage``), a GPT's blocks (8 layers of width
64, `--batch` sequences of 32 tokens; no embedding, head or optimizer) forward and backward through
:func:`scaling.train.pipeline.pipeline_layers`, for each microbatch count m with GPipe and,
where m >= stages, with the circular schedule (2 rounds). Beside each, the same program run for
its m * r useful ticks only, without the stages - 1 ticks of fill and drain: the useful work
at the pipeline's own granularity. The measured bubble is
1 - (time of the useful ticks) / (time of the pipeline).

Stages compute at every tick (their results outside the schedule discarded), where a pipeline of
one device per stage idles: on a few shared CPU cores the forced devices take turns, so a tick
costs its time either way. The machine may be shared and noisy: the programs of each m are
timed in alternating windows and the fastest window of each compared (load only adds time).
Prints a table and writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import result_path, write_result  # noqa: E402
from scaling import host_memory  # noqa: E402

N_LAYER, D_MODEL, N_HEAD, SEQ, BATCH, ROUNDS = 8, 64, 4, 32, 128, 2


def _programs(stages: int, m: int, repeats: int, batch: int = BATCH):
    """(pipelined forward and backward, the same for its useful ticks only, their arguments) of
    ``m`` microbatches through ``stages`` stages, ``repeats`` rounds (1: GPipe)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from scaling import sharding as sh
    from scaling.config import MeshConfig, ModelConfig
    from scaling.model import GPT
    from scaling.train import pipeline as pl

    cfg = ModelConfig(
        n_layer=N_LAYER, n_head=N_HEAD, d_model=D_MODEL, seq_len=SEQ, vocab_size=256, scan_layers=True,
        attention="dot_product",
    )  # fmt: skip
    mesh_cfg = MeshConfig(stage=stages, data=1, pipeline_microbatches=m, pipeline_schedule="circular")
    plan = sh.PipelinePlan(stages, m, repeats)
    mesh = sh.make_mesh(sh.mesh_shape(mesh_cfg, jax.device_count()))
    with sh.mesh_context(mesh):
        boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"])
        shardings = sh.logical_to_sharding(nn.get_partition_spec(boxed), mesh)["h"]
        params = jax.jit(
            lambda: nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"])["h"],
            out_shardings=shardings,
        )()
    x = jax.device_put(
        jax.random.normal(jax.random.key(1), (batch, SEQ, D_MODEL)), NamedSharding(mesh, P())
    )  # fmt: skip
    pos = jnp.broadcast_to(jnp.arange(SEQ), (batch, SEQ))

    def piped(params, x):
        return jnp.mean(pl.pipeline_layers(cfg, plan, params, x, pos) ** 2)

    def no_bubble(params, x):  # the same ticks but those of fill and drain: the useful ones
        return jnp.mean(pl.pipeline_layers(cfg, plan, params, x, pos, ticks=m * repeats) ** 2)

    with sh.mesh_context(mesh):
        compiled = [
            jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(params, x).compile() for f in (piped, no_bubble)
        ]
    return compiled, (params, x)


def _time(fn, args, n: int) -> float:
    import jax

    t0 = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def measure(stages: int, m: int, repeats: int, windows: int, steps: int, batch: int = BATCH) -> dict:
    (piped, useful), args = _programs(stages, m, repeats, batch)
    _time(piped, args, 1), _time(useful, args, 1)  # warm
    pipe_s, ideal_s = [], []
    for _ in range(windows):
        pipe_s.append(_time(piped, args, steps))
        ideal_s.append(_time(useful, args, steps))
    pipe, ideal = min(pipe_s), min(ideal_s)  # other jobs only ever add time
    return {
        "schedule": "gpipe" if repeats == 1 else "circular",
        "rounds": repeats,
        "microbatches": m,
        "ticks": m * repeats + stages - 1,
        "step_s": pipe,
        "useful_ticks_s": ideal,
        "bubble_measured": 1 - ideal / pipe,
        "bubble_formula": (stages - 1) / (m * repeats + stages - 1),
        "step_s_windows": pipe_s,
        "useful_ticks_s_windows": ideal_s,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--microbatches", default="1,2,4,8")
    ap.add_argument("--windows", type=int, default=5, help="alternating timing windows per program")
    ap.add_argument("--steps", type=int, default=3, help="steps per window")
    ap.add_argument("--quick", action="store_true", help="microbatches 1,4; 2 windows of 2 steps")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences per step (each microbatch: batch / m)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    if args.quick:
        args.microbatches, args.windows, args.steps = "1,4", 2, 2
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.stages}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    counts = [int(x) for x in args.microbatches.split(",")]
    rows = []
    for m in counts:
        for repeats in (1, ROUNDS) if m >= args.stages else (1,):
            rows.append(measure(args.stages, m, repeats, args.windows, args.steps, args.batch))
            r = rows[-1]
            print(
                f"{r['schedule']:>8} m={m:<3} step {r['step_s'] * 1e3:8.1f} ms  useful ticks "
                f"{r['useful_ticks_s'] * 1e3:8.1f} ms  bubble {r['bubble_measured']:.3f} "
                f"(formula {r['bubble_formula']:.3f})",
                flush=True,
            )
    result = {
        "stages": args.stages,
        "model": {"n_layer": N_LAYER, "d_model": D_MODEL, "n_head": N_HEAD, "seq_len": SEQ, "batch": args.batch},
        "windows": args.windows,
        "steps_per_window": args.steps,
        "rows": rows,
    }
    write_result(args.out or result_path("pipeline_bubble"), result)
    return result


if __name__ == "__main__":
    main()
