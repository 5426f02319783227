"""Gradient accumulation: the loss and gradients of a batch as the mean over microbatches.

A batch of B rows split into m microbatches of B/m rows gives the mean loss and gradients of
the whole batch (for a loss that is a mean over rows), while only one microbatch's
activations are alive at a time. Microbatch i takes rows i, i + m, i + 2m, ...: with the
batch sharded by rows, every shard holds its share of each microbatch, so no data moves
between devices. Microbatch i draws its dropout from ``fold_in(rng, i)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
"""``loss_fn(params, batch_bt, rng)``: a scalar mean over the batch's rows."""


def split_rows(batch_bt: jax.Array, microbatches: int) -> jax.Array:
    """(m, B/m, ...) microbatches of a (B, ...) batch; microbatch i holds rows i, i + m, ..."""
    return jnp.swapaxes(batch_bt.reshape(-1, microbatches, *batch_bt.shape[1:]), 0, 1)


def loss_and_grads(
    loss_fn: LossFn, params: Any, batch_bt: jax.Array, rng: jax.Array, microbatches: int
) -> tuple[jax.Array, Any]:
    """``jax.value_and_grad(loss_fn)`` over the batch, accumulated over ``microbatches`` (which
    must divide the batch's rows) in a ``lax.scan``."""
    grad_fn = jax.value_and_grad(loss_fn)
    if microbatches == 1:
        return grad_fn(params, batch_bt, rng)
    micro_mbt = split_rows(batch_bt, microbatches)

    def body(acc, i):
        loss, grads = grad_fn(params, micro_mbt[i], jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zero, jnp.arange(microbatches))
    return jax.tree.map(lambda a: a / microbatches, (loss, grads))
