"""The train step's CPU levers against nanoGPT's PyTorch step, in one process.

    python -m benchmarks.cpu_levers [--preset 256x6|nanogpt-cpu] [--variants xla:0,eigen:0,onednn:0]
                                    [--windows 5] [--steps 2]

Each variant ``LEVER:MICROBATCHES`` is this repo's train step (``ShapePrograms``' lowering) with
the dense products of ``LEVER`` (``LEVERS``: blas, OpenBLAS through the FFI, ``model.dense=blas``;
or XLA's dots compiled with the options of xla, eigen or onednn) and with ``train.microbatches``
MICROBATCHES (0: the product's auto choice). All variants and nanoGPT's
step run in alternating windows of ``--steps`` steps; each variant's ratio is the median over
windows of nanoGPT's window time over the variant's (above 1: the variant is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from benchmarks.cli_vs_torch import PRESETS
from benchmarks.record import result_path, write_result
from benchmarks.throughput import bench_config
from benchmarks.torch_nanogpt import torch_step_runner
from scaling import host_memory
from scaling.config import ModelConfig
from scaling.sharding import make_mesh, mesh_shape
from scaling.train import ShapePrograms
from scaling.train.xla_options import CPU_DOTS

LEVERS: dict[str, tuple[str, dict | None]] = {
    "blas": ("blas", None),
    **{name: ("xla", options) for name, options in CPU_DOTS.items()},
}
"""lever -> (``model.dense``, XLA compile options): blas, or XLA's dots by the libraries of
``scaling.train.xla_options`` (xla: XLA's own choice, eigen, onednn)."""


def variant_runner(model: ModelConfig, batch: int, options: dict | None, microbatches: int):
    """(run(reps), compile seconds, microbatches used) of the train step compiled with ``options``."""
    cfg = bench_config(model, batch, microbatches)
    programs = ShapePrograms(cfg, make_mesh(mesh_shape(cfg.mesh, jax.device_count())), total_steps=10**6)
    t0 = time.perf_counter()
    compiled = programs._lower_step().compile(compiler_options=options)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    batches = [
        jax.device_put(rng.integers(0, 257, (batch, model.seq_len + 1), dtype=np.int32), programs.batch_sharding)
        for _ in range(4)
    ]
    holder = {"state": programs.init_state()}

    def run(reps):
        s, m = holder["state"], None
        for i in range(reps):
            s, m = compiled(s, batches[i % 4], programs.run_args)
        jax.block_until_ready(m)
        holder["state"] = s

    run(2)
    return run, compile_s, programs.microbatches


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="256x6", choices=sorted(PRESETS))
    ap.add_argument("--variants", default="blas:0,xla:0,eigen:0,onednn:0")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="train steps per timed window")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/cpu_levers_<preset>_cpu.json)")
    args = ap.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    import torch

    p = PRESETS[args.preset]
    model = ModelConfig(
        n_layer=p["n_layer"], d_model=p["d_model"], n_head=p["n_head"], seq_len=p["seq_len"], vocab_size=257
    )
    runners, info = {}, {}
    for v in args.variants.split(","):
        lever, micro = v.split(":")
        dense, options = LEVERS[lever]
        run, compile_s, used = variant_runner(dataclasses.replace(model, dense=dense), p["batch"], options, int(micro))
        runners[v] = run
        info[v] = {"lever": lever, "dense": dense, "options": options, "microbatches": used, "compile_s": compile_s}
    runners["torch"] = torch_step_runner(model, p["batch"])[0]
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.windows):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run(args.steps)
            times[k].append((time.perf_counter() - t0) / args.steps)
    tokens = p["batch"] * p["seq_len"]
    rows = {}
    for k in runners:
        rows[k] = {
            **info.get(k, {}),
            "step_ms": 1e3 * statistics.median(times[k]),
            "tokens_per_s": tokens / statistics.median(times[k]),
            "over_torch": statistics.median(t / s for s, t in zip(times[k], times["torch"])),
        }
    print(f"{args.preset}: {p}; {torch.get_num_threads()} threads; medians of {args.windows} windows")
    for k, r in rows.items():
        print(f"{k:>16} {r['step_ms']:>9.1f} ms {r['tokens_per_s']:>8.0f} tok/s {r['over_torch']:>6.2f}x nanoGPT")
    result = {
        "preset": args.preset,
        **p,
        "windows": args.windows,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
    }
    return write_result(args.out or result_path(f"cpu_levers_{args.preset}", "cpu"), result)


if __name__ == "__main__":
    main()
