"""How well a model predicts text: the next-token loss, bits per byte, and the sliding-window
loss and perplexity of a whole text.

The next-token loss of a window of ``n + 1`` tokens scores tokens 1..n, each from the tokens
before it; training, validation, evaluation of a text, sequence scoring and curriculum
difficulty all compute it with :func:`token_nll`. Bits per byte divide the total loss by
``ln 2`` and by the UTF-8 bytes the scored tokens stand for, so models with different
tokenizers compare.

A text longer than the model's context is scored over sliding windows
(:func:`window_plan`): every token is scored exactly once, each (after the first window)
with at least ``context - stride + 1`` tokens of context. A request whose buffers would take
more than MEMORY_FRACTION of the device's memory is refused before any compute
(:func:`check_memory`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.model import GPT

MEMORY_FRACTION = 0.5  # of the device's memory that the buffers of one decode or evaluation may take


# ----------------------------------------------------------------------------- the loss


def token_nll(model: GPT, params: Any, batch_bt: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
    """Next-token cross-entropy (nats) of each target of windows of seq_len + 1 tokens: (B, T)
    for a (B, T + 1) batch; ``rng`` drives dropout when ``train``."""
    x_bt, y_bt = batch_bt[:, :-1], batch_bt[:, 1:]
    rngs = {"dropout": rng} if rng is not None else None
    logits_btv = model.apply({"params": params}, x_bt, train=train, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt)


def cross_entropy(model: GPT, params: Any, batch_bt: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
    """Mean next-token cross-entropy (nats) of windows of seq_len + 1 tokens."""
    return token_nll(model, params, batch_bt, train=train, rng=rng).mean()


def nats_to_bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Bits per byte of a total loss over targets that stand for ``n_bytes`` UTF-8 bytes."""
    return total_nats / (math.log(2) * max(n_bytes, 1))


def bits_per_byte(mean_loss_nats: float, n_target_tokens: int, n_bytes: int) -> float:
    """Bits per byte of a mean loss over ``n_target_tokens`` targets standing for ``n_bytes`` bytes."""
    return nats_to_bits_per_byte(mean_loss_nats * n_target_tokens, n_bytes)


# ----------------------------------------------------------------------------- memory


def forward_bytes(cfg: ModelConfig, rows: int, length: int) -> int:
    """A lower bound of the memory a forward pass over ``rows`` sequences of ``length`` tokens
    holds at once: a float32 KV cache of every layer, the logits, one layer's attention scores."""
    cache = 2 * cfg.n_layer * rows * length * cfg.d_model * 4
    return cache + rows * length * cfg.padded_vocab * 4 + rows * cfg.n_head * length * length * 4


def device_memory_bytes() -> int:
    """Memory of the first local device: its allocator's limit where JAX reports one (GPUs,
    TPUs), else the machine's physical memory (CPUs)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: ModelConfig, rows: int, length: int, what: str, lower: str) -> None:
    """UsageError when :func:`forward_bytes` exceeds MEMORY_FRACTION of the device's memory."""
    need, have = forward_bytes(cfg, rows, length), device_memory_bytes()
    if need > MEMORY_FRACTION * have:
        raise UsageError(
            f"{what} ({rows} row(s) of {length} tokens) needs at least {need / 2**30:.3g} GiB, more than "
            f"{MEMORY_FRACTION:.0%} of this device's {have / 2**30:.3g} GiB; lower {lower}"
        )


# ----------------------------------------------------------------------------- a whole text


@dataclass(frozen=True)
class Evaluation:
    """Mean next-token loss (nats) over every token of a text, its perplexity, and bits per
    byte (total nats / ln 2 / UTF-8 bytes the scored tokens stand for)."""

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    windows: int
    context: int
    stride: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def window_plan(n_seq: int, context: int, stride: int) -> list[tuple[int, int]]:
    """Sliding windows over a sequence of ``n_seq`` tokens (targets are positions 1..n_seq-1):
    ``(start, first)`` pairs; a window feeds tokens ``start .. start+context-1`` and scores its
    targets from offset ``first`` on, so every target is scored exactly once, each (after the
    first window) with at least ``context - stride + 1`` tokens of context. Windows hold
    ``context`` inputs, except a single shorter one when the whole sequence fits."""
    if not 1 <= stride <= context:
        raise UsageError(f"--stride must be in [1, context={context}], got {stride}")
    n_targets = n_seq - 1
    if n_targets <= context:
        return [(0, 0)]
    starts = list(range(0, n_targets - context, stride)) + [n_targets - context]
    plan, last = [], 0  # last: the highest target index scored so far
    for a in starts:
        plan.append((a, max(last, a) - a))
        last = a + context
    return plan


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_nll(cfg: ModelConfig, params, windows_bn: jax.Array) -> jax.Array:
    return token_nll(GPT(cfg), params, windows_bn)


def evaluate_tokens(
    cfg: ModelConfig,
    params,
    ids: Sequence[int],
    *,
    bos: int,
    byte_lengths: np.ndarray,
    stride: int | None = None,
    batch_size: int = 8,
) -> Evaluation:
    """Loss, perplexity and bits per byte of ``ids`` (``bos`` is prepended, so the first token
    is scored too) over sliding windows of the model's context ``cfg.seq_len``."""
    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        raise UsageError("the text holds no tokens")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    C = cfg.seq_len
    stride = max(C // 2, 1) if stride is None else stride
    seq = np.concatenate([[bos], ids]).astype(np.int32)
    plan = window_plan(len(seq), C, stride)
    check_memory(cfg, min(batch_size, len(plan)), C, "evaluating", "--batch-size")
    n = min(C, len(seq) - 1)
    windows = np.stack([seq[a : a + n + 1] for a, _ in plan])
    mask = np.stack([np.arange(n) >= first for _, first in plan]).astype(np.float64)
    total = 0.0
    for i in range(0, len(plan), batch_size):
        w, m = windows[i : i + batch_size], mask[i : i + batch_size]
        pad = batch_size - len(w)
        if pad and len(plan) > batch_size:  # one shape for every batch
            w, m = np.concatenate([w, np.repeat(w[:1], pad, 0)]), np.concatenate([m, np.zeros((pad, n))])
        nll = np.asarray(jax.device_get(_window_nll(cfg, params, jnp.asarray(w))), np.float64)
        total += float((nll * m).sum())
    n_scored = int(mask.sum())
    assert n_scored == len(ids), (n_scored, len(ids))
    n_bytes = int(np.asarray(byte_lengths)[ids].sum())
    loss = total / n_scored
    return Evaluation(
        loss=loss,
        perplexity=float(np.exp(loss)),
        bits_per_byte=nats_to_bits_per_byte(total, n_bytes),
        tokens=n_scored,
        bytes=n_bytes,
        windows=len(plan),
        context=C,
        stride=stride,
    )
