"""Why a compile-ahead thread shortens Python's GIL switch interval (``train.short_gil_switch``).

    python benchmarks/gil_switch.py [--shape 48x3] [--steps 200] [--out benchmarks/results/gil_switch_<backend>.json]

Times a training loop of a small model (bench-smoke's smallest shape: d_model 48, 3 layers,
batch 8 x 32 bytes; step t dispatched before step t-1's metrics are fetched) alone and beside
a thread that keeps tracing and lowering another train step (what a compile-ahead thread
does between compiles), with Python's default switch interval (5 ms) and with 0.2 ms.
Writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time

import jax
import jax.numpy as jnp

from benchmarks.record import result_path, write_result
from scaling import host_memory
from scaling.config import Config, ModelConfig, TrainConfig
from scaling.sharding import make_mesh
from scaling.train import Trainer


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="48x3", help="d_model x n_layer")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=None, help="default: benchmarks/results/gil_switch_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    d, n_layer = map(int, args.shape.split("x"))
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})

    def trainer(width):
        model = ModelConfig(n_layer=n_layer, d_model=width, n_head=width // 16, seq_len=32, vocab_size=65)
        return Trainer(dataclasses.replace(Config(), model=model, train=TrainConfig(batch_size=8)), mesh, 10**6)

    tr, other = trainer(d), trainer(d + 32)
    state = tr.init_state()
    batch = jax.random.randint(jax.random.key(0), (8, 33), 0, 65).astype(jnp.int32)

    def loop() -> float:
        nonlocal state
        prev, t0 = None, time.perf_counter()
        for _ in range(args.steps):
            state, m = tr.train_step(state, batch)
            if prev is not None:
                jax.device_get(prev)
            prev = m
        jax.device_get(prev)
        return (time.perf_counter() - t0) / args.steps * 1e3

    loop()  # compile and warm up
    stop = threading.Event()

    def tracing():
        while not stop.is_set():
            other._lower_step()

    default = sys.getswitchinterval()
    result = {}
    for interval in (default, 2e-4):
        sys.setswitchinterval(interval)
        alone = loop()
        stop.clear()
        th = threading.Thread(target=tracing)
        th.start()
        time.sleep(0.3)
        beside = loop()
        stop.set()
        th.join()
        result[interval] = (alone, beside)
        print(
            f"switch interval {interval * 1e3:.1f} ms: {alone:.2f} ms per step alone, "
            f"{beside:.2f} ms beside a tracing thread",
            flush=True,
        )
    sys.setswitchinterval(default)
    return write_result(
        args.out or result_path("gil_switch"),
        {
            "backend": jax.default_backend(),
            "shape": args.shape,
            "batch": 8,
            "seq_len": 32,
            "steps": args.steps,
            "rows": [{"switch_interval_s": k, "alone_ms": a, "beside_tracing_ms": b} for k, (a, b) in result.items()],
        },
    )


if __name__ == "__main__":
    main()
