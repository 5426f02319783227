"""The training loss and gradient norm of one model under each attention implementation.

python -m benchmarks.attention_check [--dtype float32]

A check for a new backend (e.g. a GPU, where ``model.attention=auto`` picks
``jax.nn.dot_product_attention``): both implementations must give the same loss and gradients.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import ModelConfig
from scaling.model import GPT


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    base = ModelConfig(n_layer=2, d_model=128, n_head=4, seq_len=256, vocab_size=257, dtype=args.dtype)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (4, 257)), jnp.int32)
    params = GPT(base).init(jax.random.key(0), tokens[:, :-1])["params"]
    out = {}
    for impl in ("blocked", "dot_product"):
        model = GPT(dataclasses.replace(base, attention=impl))

        def loss(p):
            logits = model.apply({"params": p}, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        out[impl] = (float(value), grads)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(out["blocked"][1]), jax.tree.leaves(out["dot_product"][1])))
    print(f"{jax.default_backend()} {args.dtype}: loss blocked {out['blocked'][0]:.6f}, "
          f"dot_product {out['dot_product'][0]:.6f}; max |grad difference| {diff:.2e}")
    return {"loss": {k: v[0] for k, v in out.items()}, "max_grad_diff": diff}


if __name__ == "__main__":
    main()
