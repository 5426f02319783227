"""The fine-tuned model: which parameters train, the task losses and the task metrics.

The trainable tree is ``{"model": the GPT's parameters}`` (full fine-tuning),
``{"lora": adapters}`` (:mod:`scaling.finetune.lora`; the GPT's parameters then stay frozen)
or nothing of the model (``train.freeze_model``, a linear probe), plus
``{"head": {"w": (d_model, classes), "b": (classes,)}}`` for classification. The head reads
the final LayerNorm's output (the hidden state the language-model head reads) at the last
token of each example, or its mean over the example's tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import ModelConfig
from scaling.finetune import lora
from scaling.finetune_config import FinetuneConfig
from scaling.model import GPT, unstack_layers


def looped(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """The model in the looped layer layout (adapters address blocks as ``h_<i>``)."""
    if not cfg.scan_layers:
        return cfg, params
    return dataclasses.replace(cfg, scan_layers=False), unstack_layers(params, cfg.n_layer)


def fresh_params(cfg: ModelConfig, seed: int) -> dict:
    """A randomly initialised model of this shape (the from-scratch arm)."""
    init = jax.jit(lambda key: nn.unbox(GPT(cfg).init(key, jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]))
    return init(jax.random.key(seed))


def init_trainable(cfg: FinetuneConfig, model_cfg: ModelConfig, params: dict, n_classes: int, key) -> dict:
    k_lora, k_head = jax.random.split(key)
    out: dict = {}
    if cfg.lora.rank:
        out["lora"] = lora.init_adapters(cfg.lora, params, model_cfg.n_layer, k_lora)
    elif not cfg.train.freeze_model:
        out["model"] = params
    if cfg.task.kind == "classify":
        d = model_cfg.d_model
        w = jax.random.normal(k_head, (d, n_classes), jnp.float32) / math.sqrt(d)
        out["head"] = {"w": w, "b": jnp.zeros((n_classes,), jnp.float32)}
    return out


def model_params(cfg: FinetuneConfig, trainable: dict, base: dict) -> dict:
    """The GPT's parameters in use: the trained ones, or the base with the adapters merged."""
    if "model" in trainable:
        return trainable["model"]
    if "lora" in trainable:
        return lora.merge(cfg.lora, base, trainable["lora"])
    return base  # train.freeze_model: the head alone trains


def hidden_states(model_cfg: ModelConfig, params: dict, tokens_bt: jax.Array) -> jax.Array:
    """The final LayerNorm's output (b, t, d), read from the GPT's forward pass."""
    _, state = GPT(model_cfg).apply(
        {"params": params},
        tokens_bt,
        capture_intermediates=lambda mdl, method: mdl.name == "ln_f" and method == "__call__",
        mutable=["intermediates"],
    )
    return state["intermediates"]["ln_f"]["__call__"][0]


def pool(h_btd: jax.Array, lengths_b: jax.Array, how: str) -> jax.Array:
    """The last real token's state, or the mean over the real tokens (padding is to the right)."""
    if how == "last":
        return jnp.take_along_axis(h_btd, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
    mask_bt = (jnp.arange(h_btd.shape[1])[None] < lengths_b[:, None]).astype(h_btd.dtype)
    return (h_btd * mask_bt[..., None]).sum(1) / mask_bt.sum(1, keepdims=True)


def class_logits(cfg: FinetuneConfig, model_cfg, trainable, base, tokens_bt, lengths_b) -> jax.Array:
    h = hidden_states(model_cfg, model_params(cfg, trainable, base), tokens_bt)
    pooled = pool(h, lengths_b, cfg.task.pooling)
    return pooled @ trainable["head"]["w"] + trainable["head"]["b"]


def masked_nll(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of the next-token losses where ``mask`` is 1, number of such targets)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt)
    return (nll * mask_bt).sum(), mask_bt.sum()


def instruct_loss(cfg: FinetuneConfig, model_cfg, trainable, base, rows_bT, mask_bt):
    """Mean loss over the response tokens of the rows (and that mean's weight: their number)."""
    logits = GPT(model_cfg).apply({"params": model_params(cfg, trainable, base)}, rows_bT[:, :-1])
    total, n = masked_nll(logits, rows_bT[:, 1:], mask_bt)
    return total / jnp.maximum(n, 1.0), n


def classify_loss(cfg: FinetuneConfig, model_cfg, trainable, base, tokens_bt, lengths_b, labels_b):
    logits = class_logits(cfg, model_cfg, trainable, base, tokens_bt, lengths_b)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_b).mean(), logits


def make_optimizer(cfg: FinetuneConfig, trainable: dict) -> optax.GradientTransformation:
    """AdamW, linear warmup then cosine to zero; the head at ``train.head_lr`` when set; weight
    decay on matrices only."""
    t = cfg.train

    def sched(peak: float):
        warm = min(t.warmup_steps, t.steps - 1) if t.steps > 1 else 0
        return (
            optax.warmup_cosine_decay_schedule(0.0, peak, max(warm, 0), t.steps, 0.0)
            if warm
            else (optax.cosine_decay_schedule(peak, t.steps))
        )

    def adamw(peak: float):
        return optax.adamw(
            sched(peak), weight_decay=t.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
        )

    labels = {k: ("head" if k == "head" else "body") for k in trainable}
    tx = optax.multi_transform({"body": adamw(t.lr), "head": adamw(t.head_lr or t.lr)}, labels)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), tx) if t.grad_clip else tx


# ----------------------------------------------------------------------------- metrics


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The unweighted mean of per-class F1 over the classes that occur in either array (a class
    never predicted, or never true, counts with F1 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def exact_match(answers: list[str], generated: list[str]) -> tuple[float, float]:
    """(share of generations equal to their answer, share that begin with it), whitespace
    at either end ignored."""
    same = [g.strip() == a.strip() for a, g in zip(answers, generated, strict=True)]
    starts = [g.strip().startswith(a.strip()) for a, g in zip(answers, generated, strict=True)]
    return float(np.mean(same)), float(np.mean(starts))


def param_tree_size(tree: Any) -> int:
    return lora.count(tree)
