"""The training loss and gradients of one model under each attention implementation, and
(``--time``) each kernel's forward + backward time.

python -m benchmarks.attention_check [--dtype float32] [--time] [--batch 16] [--seq 256] [--heads 8] [--head-dim 32]
                                     [--out benchmarks/results/attention_check_<backend>.json]

A check for a new backend (e.g. a GPU, where ``model.attention=auto`` picks
``jax.nn.dot_product_attention``): every implementation that runs there (``cpu_kernel`` only on
a CPU, in float32) must give the same loss and gradients as ``dot_product``.

``--time``: forward + backward of the causal attention kernel alone on (batch, seq, heads,
head_dim) inputs, each implementation jitted, timed in alternating windows in this one
process (medians of 7 windows), and each one's time over the first implementation's.
Writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.record import result_path, write_result
from scaling import host_memory
from scaling.config import ModelConfig
from scaling.model import GPT, attention_kernel, cpu_attention


def _implementations(dtype: str) -> list[str]:
    cpu_ok = (
        jax.default_backend() == "cpu" and cpu_attention.supports(32, dtype) and cpu_attention.unavailable() is None
    )
    return (["cpu_kernel"] if cpu_ok else []) + ["blocked", "dot_product"]


def check(dtype: str) -> dict:
    base = ModelConfig(n_layer=2, d_model=128, n_head=4, seq_len=256, vocab_size=257, dtype=dtype)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (4, 257)), jnp.int32)
    params = GPT(base).init(jax.random.key(0), tokens[:, :-1])["params"]
    out = {}
    for impl in _implementations(dtype):
        model = GPT(dataclasses.replace(base, attention=impl))

        def loss(p):
            logits = model.apply({"params": p}, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        out[impl] = (float(value), grads)
    ref = out["dot_product"][1]
    diffs = {
        impl: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
        for impl, (_, g) in out.items()
        if impl != "dot_product"
    }
    print(
        f"{jax.default_backend()} {dtype}: loss "
        + ", ".join(f"{k} {v[0]:.6f}" for k, v in out.items())
        + "; max |grad difference| to dot_product: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    return {"loss": {k: v[0] for k, v in out.items()}, "max_grad_diff": diffs}


def timing(dtype: str, b: int, t: int, h: int, d: int, windows: int = 7) -> dict:
    q, k, v, do = (jax.random.normal(key, (b, t, h, d), dtype) for key in jax.random.split(jax.random.key(0), 4))
    fns = {}
    for impl in _implementations(dtype):
        f = jax.jit(lambda q, k, v, do, fn=attention_kernel(impl): jax.vjp(fn, q, k, v)[1](do))
        jax.block_until_ready(f(q, k, v, do))
        fns[impl] = f
    times: dict = {impl: [] for impl in fns}
    for _ in range(windows):  # alternating windows: every implementation sees the same machine
        for impl, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(5):
                out = f(q, k, v, do)
            jax.block_until_ready(out)
            times[impl].append((time.perf_counter() - t0) / 5 * 1e3)
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    first = next(iter(med.values()))
    print(f"forward + backward, ({b}, {t}, {h}, {d}) {dtype}, medians of {windows} windows:")
    for impl, ms in med.items():
        print(f"{impl:>12} {ms:8.1f} ms  {ms / first:5.2f}x")
    return med


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--time", action="store_true", help="also time each kernel's forward + backward")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--out", default=None, help="default: benchmarks/results/attention_check_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    out = {"backend": jax.default_backend(), "dtype": args.dtype, **check(args.dtype)}
    if args.time:
        out["timing_shape"] = {"batch": args.batch, "seq": args.seq, "heads": args.heads, "head_dim": args.head_dim}
        out["ms"] = timing(args.dtype, args.batch, args.seq, args.heads, args.head_dim)
    return write_result(args.out or result_path("attention_check"), out)


if __name__ == "__main__":
    main()
