"""Beam search with a KV cache, on the buffer layout, prefill and model step of
:mod:`scaling.inference.decode`.

Beam search keeps ``width`` live beams per prompt and a pool of the ``width`` best
finished hypotheses. Each step takes the 2W best extensions of the live beams; an
end-of-text extension ranked within the top W (or any extension at the length cap)
joins the pool with the score ``logp / n ** length_penalty`` (n: generated tokens,
end-of-text included); the W best others live on. A prompt stops once its pool is full
and no live beam can still beat its worst entry. The best pool entry is returned with
its log-probability. With ``width=1`` and ``length_penalty=0`` this is greedy decoding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.inference.decode import NEG, Sequences, layout_prompts, next_logits, prefill

__all__ = ["BeamResult", "beam_search"]


@dataclass(frozen=True)
class BeamResult(Sequences):
    """The best finished hypothesis per prompt: tokens (prompt then generated), lengths,
    its log-probability (sum over generated tokens, end-of-text included) and its score
    ``logprob / n_new ** length_penalty``."""

    logprob: np.ndarray
    score: np.ndarray


def _lp(n, alpha):
    return jnp.maximum(n, 1).astype(jnp.float32) ** alpha


@functools.partial(jax.jit, static_argnames=("cfg", "width"))
def _beam_loop(cfg: ModelConfig, params, buf_bT, plen_b, start, logits_bv, cache, max_new, eot, alpha, *, width: int):
    b, T = buf_bT.shape
    W = width
    V = logits_bv.shape[-1]
    rep = lambda x: jnp.repeat(x, W, axis=0)  # noqa: E731  (B, ...) -> (B*W, ...)
    cache = None if cache is None else jax.tree.map(rep, cache)
    logits = rep(logits_bv)
    alive_buf = jnp.repeat(buf_bT[:, None], W, axis=1)  # (B, W, T)
    alive_score = jnp.where(jnp.arange(W)[None] == 0, 0.0, NEG) * jnp.ones((b, 1))
    fin_buf = alive_buf
    fin_norm = jnp.full((b, W), NEG)
    fin_raw = jnp.full((b, W), NEG)
    fin_len = jnp.zeros((b, W), jnp.int32)
    done = jnp.zeros((b,), bool)
    best_lp = _lp(max_new, alpha)

    def cond(c):
        return (c[0] < T) & ~jnp.all(c[-1])

    def body(c):
        pos, alive_buf, alive_score, logits, cache, fin_buf, fin_norm, fin_raw, fin_len, done = c
        forced = pos < plen_b  # (B,)
        gen = pos + 1 - plen_b  # generated tokens once this one is written
        active = ~done
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, W, V)
        ftok = alive_buf[:, 0, pos]
        only_f = jnp.where(jnp.arange(V)[None, None] == ftok[:, None, None], 0.0, NEG)
        logp = jnp.where(forced[:, None, None], only_f, logp)
        cand = (alive_score[:, :, None] + logp).reshape(b, W * V)
        top_s, top_i = jax.lax.top_k(cand, 2 * W)
        parent, tok = top_i // V, (top_i % V).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_buf, parent[:, :, None], axis=1)
        seqs = jax.lax.dynamic_update_index_in_dim(seqs, tok, pos, 2)
        real = (top_s > NEG / 2) & active[:, None] & ~forced[:, None]
        is_eot = tok == eot
        cap = (gen >= max_new)[:, None]
        to_pool = real & ((is_eot & (jnp.arange(2 * W)[None] < W)) | cap)
        cand_raw = jnp.where(to_pool, top_s, NEG)
        cand_norm = jnp.where(to_pool, top_s / _lp(gen, alpha)[:, None], NEG)
        pool_norm = jnp.concatenate([fin_norm, cand_norm], axis=1)
        _, keep = jax.lax.top_k(pool_norm, W)
        take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[:, :, None], axis=1)  # noqa: E731
        fin_norm = take(pool_norm)
        fin_raw = take(jnp.concatenate([fin_raw, cand_raw], axis=1))
        fin_len = take(jnp.concatenate([fin_len, jnp.broadcast_to(gen[:, None], (b, 2 * W))], axis=1))
        fin_buf = take(jnp.concatenate([fin_buf, seqs], axis=1))
        live = (top_s > NEG / 2) & active[:, None] & (forced[:, None] | (~is_eot & ~cap))
        a_score, a_i = jax.lax.top_k(jnp.where(live, top_s, NEG), W)
        alive_buf = jnp.take_along_axis(seqs, a_i[:, :, None], axis=1)
        rows = (jnp.arange(b)[:, None] * W + jnp.take_along_axis(parent, a_i, axis=1)).reshape(-1)
        if cache is not None:
            cache = jax.tree.map(lambda x: x[rows], cache)
        logits, cache = next_logits(cfg, params, cache, alive_buf.reshape(b * W, T), pos)
        best_alive = a_score.max(axis=1)
        bound = jnp.where(alpha > 0, best_alive / best_lp, best_alive)
        pool_full = jnp.all(fin_raw > NEG / 2, axis=1)
        settled = (best_alive <= NEG / 2) | (pool_full & (bound <= fin_norm.min(axis=1)))
        done = done | (~forced & (settled | (gen >= max_new)))
        return pos + 1, alive_buf, a_score, logits, cache, fin_buf, fin_norm, fin_raw, fin_len, done

    c = (start, alive_buf, alive_score, logits, cache, fin_buf, fin_norm, fin_raw, fin_len, done)
    c = jax.lax.while_loop(cond, body, c)
    fin_buf, fin_norm, fin_raw, fin_len = c[5:9]
    best = jnp.argmax(fin_norm, axis=1)
    pick = lambda x: jnp.take_along_axis(x, best[:, None] if x.ndim == 2 else best[:, None, None], axis=1)[:, 0]  # noqa
    return pick(fin_buf), plen_b + pick(fin_len), pick(fin_raw), pick(fin_norm)


def beam_search(
    cfg: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    width: int,
    length_penalty: float = 1.0,
    eot: int | None = None,
    use_cache: bool = True,
) -> BeamResult:
    """Beam search of ``width`` beams per prompt (see the module docstring)."""
    if width < 1:
        raise UsageError(f"--beam must be >= 1, got {width}")
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise UsageError(f"--length-penalty must be a finite number >= 0, got {length_penalty}")
    buf, plen, n = layout_prompts(cfg, prompts, max_new_tokens, width)
    logits, cache = prefill(cfg, params, buf, jnp.int32(n), use_cache)
    out = _beam_loop(
        cfg,
        params,
        buf,
        plen,
        jnp.int32(n),
        logits,
        cache,
        jnp.int32(max_new_tokens),
        jnp.int32(-1 if eot is None else eot),
        jnp.float32(length_penalty),
        width=width,
    )
    tokens, lengths, raw, norm = (np.asarray(x) for x in jax.device_get(out))
    return BeamResult(tokens, lengths, np.asarray(plen), raw, norm)
