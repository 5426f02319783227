"""Pipeline parallelism: the stacked layers of a scanned GPT split over the ``stage`` mesh axis,
each batch flowing through the stages in microbatches.

A GPT made by :func:`pipelined` runs its scanned blocks (``h``, ``model.scan_layers``) as a
pipeline (``GPT.layers_fn``); the embedding before and the
final norm and head after run as ever, over the whole batch, replicated over the stages
(sharded over the data and model axes as the rule table says). The pipeline:

- splits the (B, T, D) activations into ``m`` microbatches (rows i, i + m, ..., as gradient
  accumulation does, so no row changes data shard);
- views the stacked parameters (n_layer, ...) as (repeats, stages, layers per visit, ...):
  stage s runs layers ``(k * stages + s) * n .. + n`` on a microbatch's k-th visit. GPipe
  (repeats 1) is the rule table's own split: stage s holds its consecutive layers and nothing
  moves. The circular schedule (repeats r > 1) needs stage s's r groups of layers, which the
  table's split places on other stages: XLA moves them there each step (and their gradients
  back), less traffic than an FSDP step's all-gather of every layer;
- runs ``m * r + stages - 1`` ticks under ``jax.shard_map`` over the ``stage`` axis only (the
  data, fsdp and model axes stay XLA's, so tensor parallelism and FSDP work inside a stage).
  At tick t stage s works on visit j = t - s (microbatch j mod m, round j // m), then passes its
  output to stage s + 1 with ``jax.lax.ppermute``; the last stage's output of a round that is
  not the last goes round to stage 0, which keeps it until that microbatch's next round
  (the circular schedule needs m >= stages for it to be back in time). Stages compute at
  every tick and their results outside the schedule are discarded, so a stage is busy
  ``m * r`` ticks of ``m * r + stages - 1``: the bubble is (stages - 1) / (m * r + stages - 1).

The backward pass is JAX's transpose of this loop: the ticks in reverse, gradients passed
back with the inverse permutation (all forwards, then all backwards: GPipe's order). As in
GPipe, each tick's layers are recomputed in the backward pass (``jax.checkpoint``): a stage
keeps only its ticks' inputs until then, not the activations inside m * r + stages - 1 visits. The
pipeline computes the blocks' function exactly, so a step's loss and gradients equal the
unpipelined ones up to float rounding (the order of the batch mean's sums).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from scaling.config import ModelConfig
from scaling.model.gpt import GPT, Block
from scaling.sharding import STAGE_AXIS, PipelinePlan
from scaling.train.microbatch import split_rows


def merge_rows(micro_m: jax.Array) -> jax.Array:
    """The inverse of :func:`~scaling.train.microbatch.split_rows`: (m, B/m, ...) -> (B, ...)."""
    return jnp.swapaxes(micro_m, 0, 1).reshape(-1, *micro_m.shape[2:])


def visit_layers(cfg: ModelConfig, n: int) -> nn.Module:
    """``n`` blocks under ``nn.scan``: the layers of one visit of a microbatch to a stage."""
    return nn.scan(
        Block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=n,
    )(cfg, True)


def stage_view(layer_params: Any, plan: PipelinePlan) -> Any:
    """Stacked (n_layer, ...) parameters as (repeats, stages, n_layer / (repeats * stages), ...)."""
    r, p = plan.repeats, plan.stages
    return jax.tree.map(lambda a: a.reshape(r, p, a.shape[0] // (r * p), *a.shape[1:]), layer_params)


def pipeline_layers(
    cfg: ModelConfig,
    plan: PipelinePlan,
    layer_params: Any,
    x_btd: jax.Array,
    positions_bt: jax.Array,
    ticks: int | None = None,
) -> jax.Array:
    """The scanned blocks of ``layer_params`` (stacked on a leading n_layer axis) applied to
    ``x_btd`` through the pipeline of ``plan`` under the current mesh (one with a ``stage``
    axis of ``plan.stages``). ``ticks``: the schedule's ``m * r + stages - 1`` by default; only
    to time the schedule without its fill and drain (``m * r``, benchmarks/pipeline_bubble.py),
    when the outputs are incomplete."""
    p, m, r = plan.stages, plan.microbatches, plan.repeats
    visits = m * r
    ticks = ticks or visits + p - 1
    per_visit = cfg.n_layer // (p * r)
    layers = visit_layers(cfg, per_visit)
    x_m = split_rows(x_btd, m)
    pos_m = split_rows(positions_bt, m)
    ring = [(s, (s + 1) % p) for s in range(p)]

    def run_layers(params, x_mtd, pos_mt):
        return layers.apply({"params": params}, x_mtd, None, pos_mt, None)[0]

    run_layers = jax.checkpoint(run_layers)  # see the module's docstring: remat per tick

    def stage(params_r1, x_m, pos_m):
        params_r = jax.tree.map(lambda a: a[:, 0], params_r1)  # this stage's (repeats, per_visit, ...)
        s = jax.lax.axis_index(STAGE_AXIS)

        def tick(carry, t):
            recv, back = carry
            j = jnp.clip(t - s, 0, visits - 1)
            i, k = j % m, j // m
            first = x_m[i] if r == 1 else jnp.where(k == 0, x_m[i], back[i])
            x_in = jnp.where(s == 0, first, recv)
            params = jax.tree.map(lambda a: a[k], params_r)
            y = run_layers(params, x_in, pos_m[i])
            recv = jax.lax.ppermute(y, STAGE_AXIS, ring)
            if r > 1:  # stage 0 keeps what the last stage passed round until its next round
                jl = t - (p - 1)
                il = jnp.clip(jl, 0, visits - 1) % m
                again = (s == 0) & (jl >= 0) & (jl < visits - m)
                back = back.at[il].set(jnp.where(again, recv, back[il]))
            return (recv, back), y

        back = jnp.zeros_like(x_m) if r > 1 else x_m[:0]
        _, y_t = jax.lax.scan(tick, (jnp.zeros_like(x_m[0]), back), jnp.arange(ticks))
        # the last stage's last m ticks are the last round of microbatches 0..m-1, in order
        return y_t[-m:][None]

    staged = jax.shard_map(
        stage,
        in_specs=(P(None, STAGE_AXIS), P(), P()),
        out_specs=P(STAGE_AXIS),
        axis_names=frozenset({STAGE_AXIS}),
        check_vma=False,
    )
    out_pm = staged(stage_view(layer_params, plan), x_m, pos_m)
    return merge_rows(out_pm[p - 1])


def pipelined(model: GPT, plan: PipelinePlan | None) -> GPT:
    """``model`` with its scanned blocks run through the pipeline of ``plan`` (``model`` itself for
    None). For the train step's loss: the evaluation runs the model unpipelined (XLA gathers each
    stage's layers where it needs them)."""
    if plan is None:
        return model
    return model.clone(layers_fn=functools.partial(pipeline_layers, model.cfg, plan))
