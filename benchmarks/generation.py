"""Generation speed with and without the KV cache, on the same model, in one process.

    python benchmarks/generation.py [--context 512] [--new-tokens 64] [--batch 1 4] [--layers 4 --d-model 256]
                                    [--out benchmarks/results/generation_<backend>.json]

A randomly initialised GPT (learned positions, byte vocabulary) with a context of
--context tokens decodes --new-tokens greedy tokens after a prompt of context - new
tokens, so the last step attends over the full context. Both paths run the same jitted
while-loop; the cached one feeds one token per step at the cache index, the uncached
one recomputes the whole (fixed-length) buffer every step. Each is compiled first (a
one-token run of the same shapes), then timed over --repeats runs (best taken); the time
includes the prefill. Prints a table of new tokens per second and the ratio cached /
uncached, checks that both produced the same tokens and that the ratio reaches --target,
and writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.record import result_path, write_result  # noqa: E402
from scaling import host_memory  # noqa: E402
from scaling.config import ModelConfig  # noqa: E402
from scaling.inference import generate  # noqa: E402
from scaling.model import GPT  # noqa: E402


def tokens_per_s(cfg, params, prompts, new_tokens: int, use_cache: bool, repeats: int) -> tuple[float, np.ndarray]:
    generate(cfg, params, prompts, 1, use_cache=use_cache)  # compiles: max_new_tokens is traced, shapes equal
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = generate(cfg, params, prompts, new_tokens, use_cache=use_cache)
        best = min(best, time.perf_counter() - t0)
    assert int(out.n_new.sum()) == new_tokens * len(prompts)
    return new_tokens * len(prompts) / best, out.tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--target", type=float, default=5.0, help="required cached/uncached ratio at every batch size")
    p.add_argument("--out", default=None, help="default: benchmarks/results/generation_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set

    cfg = ModelConfig(
        n_layer=args.layers, n_head=args.heads, d_model=args.d_model, seq_len=args.context, vocab_size=257, init_std=0.1
    )
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    n_prompt = args.context - args.new_tokens
    print(
        f"device: {jax.devices()[0].platform} ({jax.device_count()}), model: {cfg.n_layer} layers x "
        f"{cfg.d_model} wide, context {cfg.seq_len}, prompt {n_prompt} + {args.new_tokens} new tokens, greedy"
    )
    rows, ok = [], True
    for b in args.batch:
        rng = np.random.default_rng(b)
        prompts = [rng.integers(0, 256, n_prompt).tolist() for _ in range(b)]
        cached, tok_c = tokens_per_s(cfg, params, prompts, args.new_tokens, True, args.repeats)
        uncached, tok_u = tokens_per_s(cfg, params, prompts, args.new_tokens, False, args.repeats)
        same = bool(np.array_equal(tok_c, tok_u))
        ratio = cached / uncached
        ok &= same and ratio >= args.target
        rows.append((b, cached, uncached, ratio, same))
    print(f"{'batch':>5} {'cached tok/s':>13} {'uncached tok/s':>15} {'cached/uncached':>16} {'same tokens':>12}")
    for b, c, u, r, s in rows:
        print(f"{b:>5} {c:>13.1f} {u:>15.1f} {r:>15.1f}x {str(s):>12}")
    print(f"target: cached/uncached >= {args.target}x at context {args.context}: {'met' if ok else 'NOT met'}")
    write_result(
        args.out or result_path("generation"),
        {
            "backend": jax.default_backend(),
            "layers": cfg.n_layer,
            "d_model": cfg.d_model,
            "heads": cfg.n_head,
            "context": args.context,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "target": args.target,
            "rows": [
                {"batch": b, "cached_tok_s": c, "uncached_tok_s": u, "ratio": r, "same_tokens": s}
                for b, c, u, r, s in rows
            ],
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
