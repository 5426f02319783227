"""The step counts of the warmup-stable-decay schedule, on the host (no numpy, no JAX).

A wsd run of T steps decays over its last ``round(decay_fraction * T)`` steps (at least one, at
most T), the product taken in float32 and rounded half to even: exactly what the compiled
schedule (:func:`scaling.train.optimizer.lr_schedule`) computes from the traced T, so that the
planner, a branch's checks and the train step agree on every length.
"""

from __future__ import annotations

import struct

from scaling.config import OptimConfig


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def decay_steps(optim: OptimConfig, total_steps: int) -> int:
    """The decaying steps at the end of a wsd run of ``total_steps`` steps. (The product of two
    float32 values is exact in a float64, so rounding it once to float32 is the float32 product.)"""
    n = round(_f32(_f32(optim.decay_fraction) * _f32(float(total_steps))))
    return min(max(n, 1), max(int(total_steps), 1))


def decay_start(optim: OptimConfig, total_steps: int) -> int:
    """The first step of a wsd run's decay. The steps before it run at the warmup or peak rate,
    bit for bit those of every longer run of the config: a shorter run is a branch of a longer
    one from its checkpoint at or before this step."""
    return int(total_steps) - decay_steps(optim, total_steps)
