"""The train step and the evaluation step, as free functions of the state and a batch.

The settings a step is compiled for (the model, the optimizer, the number of microbatches)
come first, to be bound with ``functools.partial`` before ``jax.jit``; what differs between
runs of one shape comes in ``run`` (:class:`RunArgs`), as arrays, so that runs of one shape
share a compiled step:

- ``key``: the key data of ``jax.random.key(train.seed)``; step t draws dropout from
  ``fold_in(key, t)``;
- ``total_steps``: the schedule's length;
- ``lr``, ``warmup_steps``: the schedule's peak rate and warmup (``optim.lr``,
  ``optim.warmup_steps``: runs that differ only in them share the compiled step);
- ``nan_step``: ``debug.inject_nan_step``, a fault injected for tests (-1: never).

A step whose loss or gradient norm is not finite leaves the parameters and the optimizer
state as they were, and reports its loss.

``objective`` (:class:`~scaling.data.objectives.Objective`, bound like the settings; None or
causal: next-token prediction on the windows as they are) turns the step's windows into the
objective's batch inside the compiled step, from the step's own key
(:func:`scaling.data.objectives.step_key`), before they split into microbatches; the loss is
then :func:`scaling.evaluation.objective_loss`. The evaluation step corrupts with the fixed
:func:`scaling.data.objectives.eval_key`.
"""

from __future__ import annotations

from typing import Any, TypedDict

import flax.struct
import jax
import jax.numpy as jnp
import optax

from scaling.config import OptimConfig
from scaling.data import objectives as obj_lib
from scaling.evaluation import cross_entropy, objective_loss
from scaling.model import GPT
from scaling.train import microbatch
from scaling.train.optimizer import lr_schedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


class RunArgs(TypedDict):
    key: jax.Array
    total_steps: jax.Array
    lr: jax.Array
    warmup_steps: jax.Array
    nan_step: jax.Array


def train_step(
    model: GPT,
    tx: optax.GradientTransformationExtraArgs,
    optim: OptimConfig,
    microbatches: int,
    state: TrainState,
    batch_bt: jax.Array,
    run: RunArgs,
    objective: obj_lib.Objective | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step on a (B, seq_len + 1) batch: the new state and the step's metrics
    (``loss``, ``grad_norm``, ``lr``)."""
    seed_key = jax.random.wrap_key_data(run["key"])
    rng = jax.random.fold_in(seed_key, state.step)

    if objective is None or objective.kind == "causal":

        def loss_fn(params, b, r):
            return cross_entropy(model, params, b, train=True, rng=r)

    else:
        batch_bt = obj_lib.prepare(objective, batch_bt, obj_lib.step_key(seed_key, state.step))

        def loss_fn(params, b, r):
            return objective_loss(model, params, b, train=True, rng=r)

    loss, grads = microbatch.loss_and_grads(loss_fn, state.params, batch_bt, rng, microbatches)
    grad_norm = optax.tree.norm(grads)
    injected = state.step == run["nan_step"]
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~injected
    loss = jnp.where(injected, jnp.nan, loss)

    def update(params, opt_state):
        updates, opt_state = tx.update(
            grads,
            opt_state,
            params,
            total_steps=run["total_steps"],
            peak_lr=run["lr"],
            warmup_steps=run["warmup_steps"],
        )
        return optax.apply_updates(params, updates), opt_state

    # a cond rather than a select of new and old values: XLA then updates the donated buffers in
    # place instead of copying the old state for the select
    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    lr = lr_schedule(optim, run["total_steps"], run["lr"], run["warmup_steps"])(state.step)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr}


def eval_step(model: GPT, params: Any, batch_bt: jax.Array, objective: obj_lib.Objective | None = None) -> jax.Array:
    """Mean loss of one (B, seq_len + 1) batch: next-token, or over the targets ``objective``
    predicts in it."""
    if objective is None or objective.kind == "causal":
        return cross_entropy(model, params, batch_bt)
    return objective_loss(model, params, obj_lib.prepare(objective, batch_bt, obj_lib.eval_key()))


def eval_losses(
    model: GPT, params: Any, batches_kbt: jax.Array, objective: obj_lib.Objective | None = None
) -> jax.Array:
    """:func:`eval_step` of each of a stack of k batches, one batch after another (one batch's
    activations at a time): the (k,) mean losses in one program call."""
    return jax.lax.map(lambda batch_bt: eval_step(model, params, batch_bt, objective), batches_kbt)
