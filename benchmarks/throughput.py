"""Training throughput as MFU: achieved FLOP/s of full train steps over this process's own
measured matmul peak, for a few model shapes.

python -m benchmarks.throughput [--shapes 128x4,256x6,512x8] [--batch 16] [--seq 256]
                                [--windows 5] [--steps 4] [--microbatches 0] [--attention auto]
                                [--head-dim 32] [--vocab 257] [--scan-layers] [--remat]
                                [--out benchmarks/results/throughput.json]

GPT-2 small and medium on an accelerator (``model.attention`` auto takes cuDNN's fused
attention for bfloat16 on an NVIDIA GPU):

    python -m benchmarks.throughput --shapes 768x12,1024x24 --seq 1024 --vocab 50257 \
        --head-dim 64 --scan-layers --remat --batch 32

Achieved FLOP/s = Chinchilla FLOPs per token x tokens/s (median of timed windows, after
compile). Peak = a large jitted matmul timed the same way in the same process (f32 on CPU,
bf16 on GPU, where the model also computes in bf16). Memory is XLA's memory analysis of
the compiled step (arguments + temporaries). The step is the product's: with
``train.microbatches`` 0 (auto) a CPU splits the batch into microbatches of about 1024 tokens
per device, the size that measured fastest on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.record import write_result
from scaling import flops as flops_lib
from scaling import host_memory
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig
from scaling.model import dense_kind, training_attention
from scaling.sharding import make_mesh, mesh_shape
from scaling.train import Trainer, xla_options


def _median_rate(fn, work: float, windows: int, reps: int) -> float:
    """Median over ``windows`` timed windows of ``reps`` calls: work per second."""
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        fn(reps)
        rates.append(work * reps / (time.perf_counter() - t0))
    return statistics.median(rates)


def matmul_runner(dtype, n: int):
    """(run(reps), flops per rep) of a large jitted n x n matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    # compiled as the product compiles its programs (the same dot library)
    f = jax.jit(lambda x, y: x @ y).lower(a, b).compile(compiler_options=xla_options.program_options())
    f(a, b).block_until_ready()

    def run(reps):
        out = None
        for _ in range(reps):
            out = f(a, b)
        out.block_until_ready()

    return run, 2.0 * n**3


def bench_config(model: ModelConfig, batch: int, microbatches: int = 0) -> Config:
    """The benchmarks' train config of ``model``: the defaults, a short warmup, ample tokens."""
    return dataclasses.replace(
        Config(),
        model=model,
        optim=OptimConfig(warmup_steps=10),
        train=TrainConfig(batch_size=batch, microbatches=microbatches, tokens=10**9),
    )


def step_runner(model: ModelConfig, batch: int, microbatches: int = 0) -> tuple:
    """(run(reps), compiled step, compile seconds, microbatches used) for train steps of ``model``."""
    cfg = bench_config(model, batch, microbatches)
    mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
    trainer = Trainer(cfg, mesh, total_steps=10**6)
    t0 = time.perf_counter()
    compiled = trainer.compile_step()
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    batches = [
        jax.device_put(
            rng.integers(0, model.vocab_size, (batch, model.seq_len + 1), dtype=np.int32), trainer.batch_sharding
        )
        for _ in range(4)
    ]
    holder = {"state": trainer.init_state()}

    def run(reps):
        s = holder["state"]
        m = None
        for i in range(reps):
            s, m = trainer.train_step(s, batches[i % 4])
        jax.block_until_ready(m)
        holder["state"] = s

    run(2)  # warm up
    return run, compiled, compile_s, trainer.microbatches


def step_rate(
    model: ModelConfig, batch: int, windows: int, steps: int, peak_run, peak_work, microbatches: int = 0
) -> dict:
    run, compiled, compile_s, used = step_runner(model, batch, microbatches)
    tokens = batch * model.seq_len
    fpt = flops_lib.flops_per_token_chinchilla(model)
    peak_reps = max(1, int(tokens * steps * fpt / peak_work))  # the same work as a window of steps
    # Peak and step windows alternate, so both see the same machine; MFU is the median ratio.
    pairs = [
        (_median_rate(peak_run, peak_work, 1, peak_reps), _median_rate(run, tokens, 1, steps)) for _ in range(windows)
    ]
    peak = statistics.median(p for p, _ in pairs)
    tok_s = statistics.median(t for _, t in pairs)
    mfu = statistics.median(t * fpt / p for p, t in pairs)
    mem = compiled.memory_analysis()
    mem_bytes = (
        None
        if mem is None
        else int(
            mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
        )
    )
    return {
        "microbatches": used,
        "tokens_per_s": tok_s,
        "achieved_flops": tok_s * fpt,
        "matmul_peak_flops": peak,
        "mfu": mfu,
        "compile_s": compile_s,
        "step_memory_bytes": mem_bytes,
        "flops_per_token": fpt,
        "n_params": flops_lib.param_counts(model)["n_params"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="128x4,256x6,512x8", help="d_model x n_layer, comma separated")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="train steps per timed window")
    p.add_argument("--microbatches", type=int, default=0, help="train.microbatches (0: the product's auto choice)")
    p.add_argument(
        "--attention", default="auto", help="model.attention: auto | cpu_kernel | blocked | dot_product | cudnn"
    )
    p.add_argument("--dense", default="auto", help="model.dense: auto | blas | xla")
    p.add_argument("--head-dim", type=int, default=32, help="n_head = d_model / head-dim")
    p.add_argument("--vocab", type=int, default=257, help="model.vocab_size (GPT-2's: 50257)")
    p.add_argument("--scan-layers", action="store_true", help="model.scan_layers")
    p.add_argument("--remat", action="store_true", help="model.remat: recompute each block in the backward pass")
    p.add_argument("--out", default="benchmarks/results/throughput.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    gpu = jax.default_backend() == "gpu"
    dtype = "bfloat16" if gpu else "float32"
    peak_run, peak_work = matmul_runner(jnp.bfloat16 if gpu else jnp.float32, 8192 if gpu else 2048)
    rows = []
    for shape in args.shapes.split(","):
        d, n_layer = map(int, shape.split("x"))
        model = ModelConfig(
            n_layer=n_layer,
            d_model=d,
            n_head=max(1, d // args.head_dim),
            seq_len=args.seq,
            vocab_size=args.vocab,
            dtype=dtype,
            attention=args.attention,
            dense=args.dense,
            scan_layers=args.scan_layers,
            remat=args.remat,
        )
        r = step_rate(model, args.batch, args.windows, args.steps, peak_run, peak_work, args.microbatches)
        rows.append(
            {
                "shape": f"{d}x{n_layer}",
                "n_head": model.n_head,
                "attention": training_attention(model),
                "dense": dense_kind(model, jax.device_count()),
                "scan_layers": model.scan_layers,
                "remat": model.remat,
                **r,
            }
        )
    result = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "n_devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "dtype": dtype,
        "batch": args.batch,
        "seq_len": args.seq,
        "rows": rows,
    }
    print(f"{result['backend']} ({result['device']}), {dtype}, batch {args.batch} x context {args.seq}")
    print(
        f"{'shape':>8} {'params':>10} {'micro':>5} {'tok/s':>10} {'GFLOP/s':>9} {'peak':>7} {'MFU':>6} "
        f"{'compile s':>9} {'step MiB':>9}"
    )
    for r in rows:
        mem = "" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.0f}"
        print(
            f"{r['shape']:>8} {r['n_params']:>10,} {r['microbatches']:>5} {r['tokens_per_s']:>10.0f} "
            f"{r['achieved_flops'] / 1e9:>9.1f} {r['matmul_peak_flops'] / 1e9:>7.1f} {r['mfu']:>6.1%} "
            f"{r['compile_s']:>9.1f} {mem:>9}"
        )
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
