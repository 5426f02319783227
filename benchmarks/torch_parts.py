"""Where this repo's train step and nanoGPT's differ, part by part, on the same machine.

    python -m benchmarks.torch_parts [--shape 256x6] [--batch 16] [--seq 256] [--rounds 7]

In one process, the two frameworks alternating (f32, as many threads as JAX uses):

- **depth**: whole train steps (``benchmarks.torch_nanogpt``'s two steps) at 2 layers and at
  the shape's depth, so that ``(t(L) - t(2)) / (L - 2)`` is the cost of one layer and the
  rest is the depth-independent part (embedding, logits, loss, the step's fixed work);
- **parts**, forward + backward alone, per ``batch x seq`` tokens: causal attention (this
  repo's CPU kernel on one microbatch of sequences, as the step calls it, against
  ``F.scaled_dot_product_attention``; the kernel is the one ``model.attention=auto`` picks), the
  attention block (``scaling.model.Attention``:
  q/k/v and output projections around that kernel, against nanoGPT's ``c_attn``, SDPA and
  ``c_proj``; the projections are the block minus the kernel) and the MLP
  (``scaling.model.MLP`` on one microbatch, against two ``nn.Linear`` and GELU on the batch).

Medians over ``--rounds`` rounds of timed windows; prints milliseconds and the ratio, this
repo over nanoGPT (below 1: this repo is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.record import usable_cpus, write_result
from benchmarks.throughput import step_runner
from benchmarks.torch_nanogpt import torch_step_runner
from scaling import host_memory
from scaling.config import ModelConfig
from scaling.model import MLP, Attention, attention_kernel, training_attention


def _ms(fn, reps: int) -> float:
    t0 = time.perf_counter()
    fn(reps)
    return (time.perf_counter() - t0) / reps * 1e3


def _jax_loop(grad_fn, args, per_call: int):
    """run(reps) for a jitted gradient: ``per_call`` calls per rep (microbatches of a batch)."""

    def run(reps):
        out = None
        for _ in range(reps * per_call):
            out = grad_fn(*args)
        jax.block_until_ready(out)

    run(1)
    return run


def jax_parts(model: ModelConfig, batch: int, micro_rows: int) -> dict:
    """run(reps) per part for this repo, each rep covering ``batch`` sequences."""
    t, d = model.seq_len, model.d_model
    key = jax.random.key(0)
    x = jax.random.normal(key, (micro_rows, t, d))
    pos = jnp.broadcast_to(jnp.arange(t), (micro_rows, t))
    per_call = batch // micro_rows
    q, k, v = (jax.random.normal(jax.random.key(i), (micro_rows, t, model.n_head, model.head_dim)) for i in range(3))
    kernel = attention_kernel(training_attention(model))  # the step's
    attn_grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(kernel(q, k, v) ** 2), argnums=(0, 1, 2)))
    mlp = MLP(model)
    mlp_params = mlp.init(key, x, train=False)
    mlp_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp.apply(p, x, train=False) ** 2), argnums=(0, 1)))
    attn = Attention(model)  # projections and the kernel the step uses
    attn_params = attn.init(key, x, pos, train=False)
    block_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(attn.apply(p, x, pos, train=False)[0] ** 2), argnums=(0, 1)))
    return {
        "attention": _jax_loop(attn_grad, (q, k, v), per_call),
        "mlp": _jax_loop(mlp_grad, (mlp_params, x), per_call),
        "attention block": _jax_loop(block_grad, (attn_params, x), per_call),
    }


def torch_parts(model: ModelConfig, batch: int) -> dict:
    """run(reps) per part for nanoGPT's modules, each rep covering ``batch`` sequences."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    t, d, h = model.seq_len, model.d_model, model.n_head
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, h, t, d // h, requires_grad=True) for _ in range(3))
    x = torch.randn(batch, t, d, requires_grad=True)
    c_fc, c_proj = tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)
    c_attn, a_proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)

    leaves = [q, k, v, x, *c_fc.parameters(), *c_proj.parameters(), *c_attn.parameters(), *a_proj.parameters()]

    def part(loss_fn):
        def run(reps):
            for _ in range(reps):
                for leaf in leaves:  # as nanoGPT's zero_grad(set_to_none=True): no accumulation
                    leaf.grad = None
                loss_fn().backward()

        run(1)
        return run

    def block():
        qq, kk, vv = (a.view(batch, t, h, d // h).transpose(1, 2) for a in c_attn(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        return (a_proj(y.transpose(1, 2).contiguous().view(batch, t, d)) ** 2).sum()

    return {
        "attention": part(lambda: (F.scaled_dot_product_attention(q, k, v, is_causal=True) ** 2).sum()),
        "mlp": part(lambda: (c_proj(F.gelu(c_fc(x), approximate="tanh")) ** 2).sum()),
        "attention block": part(block),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="256x6", help="d_model x n_layer")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/torch_parts.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    import torch

    torch.set_num_threads(usable_cpus())  # as torch_step_runner (and as JAX uses)
    d, n_layer = map(int, args.shape.split("x"))
    model = ModelConfig(n_layer=n_layer, d_model=d, n_head=max(1, d // 32), seq_len=args.seq, vocab_size=257)
    shallow = dataclasses.replace(model, n_layer=2)
    deep_run, _, _, micro = step_runner(model, args.batch)
    runners = {
        ("step", n_layer, "jax"): deep_run,
        ("step", 2, "jax"): step_runner(shallow, args.batch)[0],
        ("step", n_layer, "torch"): torch_step_runner(model, args.batch)[0],
        ("step", 2, "torch"): torch_step_runner(shallow, args.batch)[0],
    }
    framework_parts = (
        ("jax", jax_parts(model, args.batch, args.batch // micro)),
        ("torch", torch_parts(model, args.batch)),
    )
    for fw, parts in framework_parts:
        runners.update({(name, n_layer, fw): run for name, run in parts.items()})
    times: dict = {k: [] for k in runners}
    for _ in range(args.rounds):  # every runner once per round, so all see the same machine
        for k, run in runners.items():
            times[k].append(_ms(run, 1 if k[0] == "step" else 3))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {}
    for fw in ("jax", "torch"):
        per_layer = (med[("step", n_layer, fw)] - med[("step", 2, fw)]) / (n_layer - 2)
        rows[fw] = {
            "step": med[("step", n_layer, fw)],
            "per layer": per_layer,
            "rest (not per layer)": med[("step", n_layer, fw)] - n_layer * per_layer,
            **{name: med[(name, n_layer, fw)] for name in ("attention", "attention block", "mlp")},
        }
        rows[fw]["projections (block - attention)"] = rows[fw]["attention block"] - rows[fw]["attention"]
    print(
        f"{args.shape}, batch {args.batch} x {args.seq}, f32, {torch.get_num_threads()} threads; ms per "
        f"{args.batch * args.seq} tokens, forward + backward (this repo: {micro} microbatches of "
        f"{args.batch // micro} sequences); medians of {args.rounds} rounds"
    )
    print(f"{'':>34} {'this repo':>10} {'nanoGPT':>10} {'ratio':>7}")
    for name in rows["jax"]:
        j, t = rows["jax"][name], rows["torch"][name]
        print(f"{name:>34} {j:>10.1f} {t:>10.1f} {j / t:>7.2f}")
    result = {
        "shape": args.shape,
        "batch": args.batch,
        "seq_len": args.seq,
        "microbatches": micro,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "rows": rows,
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
