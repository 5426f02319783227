"""LLVM's optimisation level for the train step on a CPU: compile cost and step time, per level.

    python -m benchmarks.llvm_level [--shapes 128x4,256x6,512x8] [--batch 16] [--seq 256]
                                    [--head-dim 32] [--levels 1,2] [--compiles 3] [--rounds 6]
                                    [--steps 3] [--quick] [--out benchmarks/results/llvm_level_<backend>.json]

For each shape, in one process with the persistent compilation cache off: the product's
train step lowered and compiled with ``xla_backend_optimization_level`` at each level in
turn, ``--compiles`` times (the product compiles its step at XLA's default, 2), the
median compile wall time and the process's CPU seconds meanwhile (XLA compiles on threads
of its own), then the compiled steps timed in alternating windows of ``--steps`` steps (so
every level sees the same machine); medians over ``--rounds`` windows. bench-smoke's shapes:
``--shapes 48x3,64x4,80x5 --batch 8 --seq 32 --head-dim 16 --steps 100``. ``--quick``: the
128x4 shape alone, one compile per level and three rounds. Writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["SCALING_COMPILE_CACHE"] = "off"  # every compile is a real one

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.record import result_path, write_result  # noqa: E402
from benchmarks.throughput import bench_config  # noqa: E402
from scaling import host_memory  # noqa: E402
from scaling.config import Config, ModelConfig  # noqa: E402
from scaling.sharding import make_mesh, mesh_shape  # noqa: E402
from scaling.train import Trainer  # noqa: E402


def compiled_steps(cfg: Config, levels: list[int], repeats: int) -> dict:
    """{level: [compiled step, trainer, median compile wall s, median compile CPU s]}: the
    levels compiled in turn, ``repeats`` times each (a fresh Trainer and lowering every time)."""
    mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
    out: dict = {level: [None, None, [], []] for level in levels}
    for _ in range(repeats):
        for level in levels:
            trainer = Trainer(cfg, mesh, 10**6)
            lowered = trainer._lower_step()
            w0, c0 = time.perf_counter(), time.process_time()
            step = lowered.compile(compiler_options={"xla_backend_optimization_level": level})
            out[level][2].append(time.perf_counter() - w0)
            out[level][3].append(time.process_time() - c0)
            out[level][:2] = step, trainer
    return {
        level: [step, trainer, statistics.median(w), statistics.median(c)]
        for level, (step, trainer, w, c) in out.items()
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="128x4,256x6,512x8", help="d_model x n_layer, comma separated")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--levels", default="1,2")
    p.add_argument("--compiles", type=int, default=3, help="compiles of each level (medians)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="train steps per timed window")
    p.add_argument("--quick", action="store_true", help="--shapes 128x4 --compiles 1 --rounds 3")
    p.add_argument("--out", default=None, help="default: benchmarks/results/llvm_level_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    if args.quick:
        args.shapes, args.compiles, args.rounds = "128x4", 1, 3
    levels = [int(x) for x in args.levels.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'shape':>8} {'level':>5} {'compile s':>9} {'compile CPU s':>13} {'step ms':>9}")
    for shape in args.shapes.split(","):
        d, n_layer = map(int, shape.split("x"))
        model = ModelConfig(
            n_layer=n_layer, d_model=d, n_head=max(1, d // args.head_dim), seq_len=args.seq, vocab_size=257
        )
        steps = compiled_steps(bench_config(model, args.batch), levels, args.compiles)
        state = {}
        for level, (_, trainer, _, _) in steps.items():
            batch = jax.device_put(
                rng.integers(0, 257, (args.batch, args.seq + 1), dtype=np.int32), trainer.batch_sharding
            )
            state[level] = [trainer.init_state(), batch, []]
        for _ in range(args.rounds):
            for level, (step, trainer, _, _) in steps.items():
                s, batch, times = state[level]
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    s, m = step(s, batch, trainer.run_args)
                jax.block_until_ready(m)
                times.append((time.perf_counter() - t0) / args.steps * 1e3)
                state[level][0] = s
        for level, (_, _, wall, cpu) in steps.items():
            ms = statistics.median(state[level][2])
            rows.append({"shape": shape, "level": level, "compile_s": wall, "compile_cpu_s": cpu, "step_ms": ms})
            print(f"{shape:>8} {level:>5} {wall:>9.2f} {cpu:>13.2f} {ms:>9.2f}")
    write_result(
        args.out or result_path("llvm_level"),
        {
            "backend": jax.default_backend(),
            "batch": args.batch,
            "seq_len": args.seq,
            "head_dim": args.head_dim,
            "compiles": args.compiles,
            "rounds": args.rounds,
            "steps": args.steps,
            "rows": rows,
        },
    )
    return rows


if __name__ == "__main__":
    main()
