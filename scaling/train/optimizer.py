"""The optimizer: AdamW after global-norm clipping, with linear warmup and then cosine decay or
warmup-stable-decay (WSD; Hägele et al. 2024).

The schedule's length, peak rate and warmup are arguments of the optimizer's ``update``
(``total_steps=``, ``peak_lr=``, ``warmup_steps=``), not constants in it, so that one compiled
train step serves runs of every length and learning rate (a learning-rate scan compiles each
shape once).

WSD holds the peak rate after the warmup and decays over the last
``round(decay_fraction * total_steps)`` steps (at least one) to ``min_lr_ratio * lr``. Before
its decay start (:func:`scaling.schedule.decay_start`) a run's rates are computed
by the same float operations whatever its length, so they are bit for bit those of any longer
run: a shorter run is a cooldown branch of a longer one's stable phase.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from scaling.config import OptimConfig

RUNTIME_FIELDS = ("lr", "warmup_steps")
"""The OptimConfig fields the compiled step takes as arguments (not part of its compile key)."""


def lr_schedule(cfg: OptimConfig, total_steps, peak_lr=None, warmup_steps=None):
    """Linear warmup to the peak over ``warmup_steps`` (nanoGPT's (s+1)/(w+1)), then cosine
    decay that reaches ``min_lr_ratio * lr`` exactly at the last step (s = total_steps-1), or
    for ``schedule=wsd`` the peak until ``decay_start(cfg, total_steps)`` and then a linear or
    1-sqrt decay whose last step (s = total_steps-1) is at ``min_lr_ratio * lr``. ``total_steps``,
    ``peak_lr`` (default ``cfg.lr``) and ``warmup_steps`` (default ``cfg.warmup_steps``) may be
    traced."""
    total_steps = jnp.asarray(total_steps, jnp.int32)
    warmup_steps = cfg.warmup_steps if warmup_steps is None else warmup_steps
    warmup = jnp.minimum(jnp.asarray(warmup_steps, jnp.int32), jnp.maximum(total_steps - 1, 0))
    peak = jnp.asarray(cfg.lr if peak_lr is None else peak_lr, jnp.float32)
    floor = peak * jnp.float32(cfg.min_lr_ratio)
    if cfg.schedule == "wsd":
        # scaling.schedule.decay_steps, traced: round(decay_fraction * T) in float32, half to even
        n_decay = jnp.round(jnp.float32(cfg.decay_fraction) * total_steps.astype(jnp.float32)).astype(jnp.int32)
        n_decay = jnp.clip(n_decay, 1, jnp.maximum(total_steps, 1))
        start = total_steps - n_decay

        def wsd(step):
            s = jnp.asarray(step, jnp.float32)
            warm = peak * (s + 1) / (warmup + 1)
            frac = jnp.clip((s - start + 1) / n_decay, 0.0, 1.0)  # 1/n at the decay's first step, 1 at its last
            left = 1.0 - (frac if cfg.decay_shape == "linear" else jnp.sqrt(frac))
            cool = floor + (peak - floor) * left
            return jnp.where(s < warmup, warm, jnp.where(s < start, peak, cool))

        return wsd
    decay = jnp.maximum(total_steps - 1 - warmup, 1)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak * (s + 1) / (warmup + 1)
        frac = jnp.clip((s - warmup) / decay, 0.0, 1.0)
        cos = floor + 0.5 * (peak - floor) * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(s < warmup, warm, cos)

    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on norms, biases or embeddings."""

    def keep(path, _):
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(keep, params)


def scale_by_lr_schedule(cfg: OptimConfig) -> optax.GradientTransformationExtraArgs:
    """optax's ``scale_by_learning_rate(lr_schedule(cfg, total_steps))`` (the same state, a
    ``ScaleByScheduleState`` counting updates) with ``total_steps`` (and optionally ``peak_lr``
    and ``warmup_steps``) passed to ``update``."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, total_steps, peak_lr=None, warmup_steps=None, **extra_args):
        del params, extra_args
        step_size = -lr_schedule(cfg, total_steps, peak_lr, warmup_steps)(state.count)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformationExtraArgs:
    """AdamW (optax.adamw's chain) after global-norm clipping; ``update`` takes ``total_steps=``
    (and optionally ``peak_lr=``, ``warmup_steps=``)."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts.append(
        optax.chain(
            optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask),
            scale_by_lr_schedule(cfg),
        )
    )
    return optax.chain(*parts)
