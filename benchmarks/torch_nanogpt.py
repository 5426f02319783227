"""The same training step in PyTorch, written the way nanoGPT writes it, next to ours.

python -m benchmarks.torch_nanogpt [--shape 256x6] [--batch 16] [--seq 256] [--windows 5] [--steps 3]

nanoGPT's GPT (pre-LayerNorm blocks with biases, learned positions, tied head, GELU MLP,
``F.scaled_dot_product_attention(is_causal=True)``, AdamW, gradient clipping at 1.0), built
here at the benchmark's shape over the same padded byte vocabulary, f32 on the CPU with as
many threads as JAX uses. Both steps are timed in this one process, in alternating windows
with their own framework's large-matmul peak, so the printed MFUs (Chinchilla FLOPs per
token x tokens/s over that peak) and the tokens/s ratio see the same machine.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.record import usable_cpus, write_result
from benchmarks.throughput import _median_rate, matmul_runner, step_runner
from scaling import flops as flops_lib
from scaling import host_memory
from scaling.config import ModelConfig


def torch_step_runner(model_cfg: ModelConfig, batch: int):
    """(run(reps), torch peak run(reps), peak flops per rep) for nanoGPT's step in PyTorch."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    d, h, t, v = model_cfg.d_model, model_cfg.n_head, model_cfg.seq_len, model_cfg.padded_vocab

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
            self.c_attn, self.c_proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
            self.c_fc, self.mlp_proj = tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, vv = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, vv = (a.view(b, n, h, d // h).transpose(1, 2) for a in (q, k, vv))
            y = F.scaled_dot_product_attention(q, k, vv, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, n, d))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(v, d), tnn.Embedding(t, d)
            self.blocks = tnn.ModuleList(Block() for _ in range(model_cfg.n_layer))
            self.ln_f = tnn.LayerNorm(d)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))

    torch.manual_seed(0)
    torch.set_num_threads(usable_cpus())
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    data = [torch.from_numpy(rng.integers(0, model_cfg.vocab_size, (batch, t + 1)).astype(np.int64)) for _ in range(4)]

    def run(reps):
        for i in range(reps):
            b = data[i % 4]
            loss = model(b[:, :-1], b[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        loss.item()

    n = 2048
    a, bm = torch.randn(n, n), torch.randn(n, n)

    def peak(reps):
        for _ in range(reps):
            out = a @ bm
        out.sum().item()

    run(2)
    peak(2)
    return run, peak, 2.0 * n**3


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="256x6", help="d_model x n_layer")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="train steps per timed window")
    p.add_argument("--out", default="benchmarks/results/torch_nanogpt.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    import torch

    d, n_layer = map(int, args.shape.split("x"))
    model = ModelConfig(n_layer=n_layer, d_model=d, n_head=max(1, d // 32), seq_len=args.seq, vocab_size=257)
    tokens = args.batch * args.seq
    fpt = flops_lib.flops_per_token_chinchilla(model)
    jax_run, _, _, micro = step_runner(model, args.batch)
    jax_peak, peak_work = matmul_runner(jnp.float32, 2048)
    torch_run, torch_peak, _ = torch_step_runner(model, args.batch)
    peak_reps = max(1, int(tokens * args.steps * fpt / peak_work))
    samples = {"jax": [], "torch": []}
    for _ in range(args.windows):  # alternate all four so every ratio sees the same machine
        for name, step, peak in (("jax", jax_run, jax_peak), ("torch", torch_run, torch_peak)):
            pk = _median_rate(peak, peak_work, 1, peak_reps)
            tok = _median_rate(step, tokens, 1, args.steps)
            samples[name].append((tok, pk))
    rows = {}
    for name, s in samples.items():
        rows[name] = {
            "tokens_per_s": statistics.median(t for t, _ in s),
            "matmul_peak_flops": statistics.median(p for _, p in s),
            "mfu": statistics.median(t * fpt / p for t, p in s),
        }
    speedup = statistics.median(j[0] / t[0] for j, t in zip(samples["jax"], samples["torch"]))
    result = {
        "shape": args.shape,
        "n_head": model.n_head,
        "batch": args.batch,
        "seq_len": args.seq,
        "flops_per_token": fpt,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "jax_microbatches": micro,
        "rows": rows,
        "jax_over_torch_tokens_per_s": speedup,
    }
    print(
        f"{args.shape} (n_head {model.n_head}), batch {args.batch} x context {args.seq}, f32, "
        f"{torch.get_num_threads()} threads; this repo's step in {micro} microbatches (auto), nanoGPT's in one"
    )
    print(f"{'step':>22} {'tok/s':>8} {'peak GFLOP/s':>13} {'MFU':>6}")
    labels = (("jax", f"this repo (jax {jax.__version__})"), ("torch", f"nanoGPT (torch {torch.__version__})"))
    for name, label in labels:
        r = rows[name]
        print(f"{label:>22} {r['tokens_per_s']:>8.0f} {r['matmul_peak_flops'] / 1e9:>13.1f} {r['mfu']:>6.1%}")
    print(f"tokens/s, this repo over nanoGPT: {speedup:.2f}x")
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
