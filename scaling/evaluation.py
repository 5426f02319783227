"""How well a model predicts text: the next-token loss, the loss of the other pretraining
objectives, bits per byte, and the sliding-window loss and perplexity of a whole text.

The next-token loss of a window of ``n + 1`` tokens scores tokens 1..n, each from the tokens
before it; training, validation, evaluation of a text, sequence scoring and curriculum
difficulty all compute it with :func:`token_nll`. Bits per byte divide the total loss by
``ln 2`` and by the UTF-8 bytes the scored tokens stand for, so models with different
tokenizers compare.

The other objectives (``train.objective``, :mod:`scaling.data.objectives`) score the tokens
they predict: :func:`objective_loss` is the mean cross-entropy over the targets of weight 1 of
a packed objective batch (masked positions for mlm, the corrupted spans for prefix_denoise),
with the attention mask the batch carries; their bits per byte divide by the bytes of those
tokens only (:func:`val_bits_per_byte`), so every objective is scored per byte of the text it
predicts, on the held-out split.

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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling import tokenizer as tok
from scaling.config import Config, ModelConfig
from scaling.data import objectives as obj_lib
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


def objective_nll(
    model: GPT, params: Any, packed_bx: jax.Array, *, train: bool = False, rng=None
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy (nats) of each target of a packed objective batch
    (:func:`scaling.data.objectives.pack`) and the targets' weights, both (B, T); the model
    attends under the batch's prefix mask."""
    inputs_bt, targets_bt, weights_bt, prefix_b = obj_lib.unpack(packed_bx)
    rngs = {"dropout": rng} if rng is not None else None
    logits_btv = model.apply({"params": params}, inputs_bt, train=train, rngs=rngs, prefix_b=prefix_b)
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt), weights_bt


def objective_loss(model: GPT, params: Any, packed_bx: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
    """Mean cross-entropy (nats) over the predicted targets (weight 1) of a packed objective batch.
    Every row predicts as many targets, so the mean of microbatch means is the batch's mean."""
    nll_bt, w_bt = objective_nll(model, params, packed_bx, train=train, rng=rng)
    w_bt = w_bt.astype(jnp.float32)
    return jnp.sum(nll_bt * w_bt) / jnp.maximum(jnp.sum(w_bt), 1.0)


def nats_to_bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Bits per byte of a total loss over targets that stand for ``n_bytes`` UTF-8 bytes."""
    return total_nats / (math.log(2) * max(n_bytes, 1))


def bits_per_byte(mean_loss_nats: float, n_target_tokens: int, n_bytes: int) -> float:
    """Bits per byte of a mean loss over ``n_target_tokens`` targets standing for ``n_bytes`` bytes."""
    return nats_to_bits_per_byte(mean_loss_nats * n_target_tokens, n_bytes)


def val_bits_per_byte(cfg: Config, batches, n_batches: int, loss: float) -> float:
    """Bits per byte of a mean validation loss over the first ``n_batches`` validation batches of
    ``batches``: over every next-token target (causal), or over the tokens the objective predicts
    and the bytes they stand for (``cfg.model.vocab_size`` resolved)."""
    rows = n_batches * cfg.train.batch_size
    if cfg.train.objective == "causal":
        return bits_per_byte(loss, rows * cfg.model.seq_len, batches.val_target_bytes(n_batches))
    obj = obj_lib.Objective.of(cfg)
    n_bytes = _predicted_bytes(obj, batches, n_batches)
    return bits_per_byte(loss, rows * obj.predicted_per_row, n_bytes)


_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # batches -> {(objective, n): bytes}


def _predicted_bytes(obj: obj_lib.Objective, batches, n_batches: int) -> int:
    """Counted once per run's batches (every evaluation scores the same tokens), and forgotten
    with them."""
    known = _BYTES.setdefault(batches, {})
    if (obj, n_batches) not in known:
        lengths = np.asarray(tok.token_byte_lengths(batches.splits.encoding), np.int64)
        known[obj, n_batches] = obj_lib.predicted_bytes(obj, batches, n_batches, lengths)
    return known[obj, n_batches]


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
