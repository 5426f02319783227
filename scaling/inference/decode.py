"""Decoding with a KV cache: greedy, temperature, top-k, top-p (nucleus); sequence scoring.

Layout of one decode. The prompts of a batch are laid into a token buffer ``buf_bT``
of a fixed length T (the sequence length rounded up to a multiple of 128, capped at the
model's context for learned positions). The prompts are *prefilled* in one call over the
buffer: it writes every prompt position into a per-layer cache of T positions and yields
the logits of position L, the shortest prompt's length (L is traced, so one compilation
serves all prompt lengths); then a jitted ``lax.while_loop`` writes one position per step:
it picks the token at ``pos`` (a prompt token while a longer prompt is still being read,
"forced", otherwise the decoding strategy's choice from the logits) and feeds it through
the model at ``cache_index=pos`` to get the logits of ``pos + 1``. A row stops at the
end-of-text token or after ``max_new_tokens`` generated tokens; the loop ends when every
row has stopped. ``use_cache=False`` is the reference: every step recomputes the whole
buffer (causal, so the positions after ``pos`` do not matter) and reads position ``pos``.
Cache entries past ``pos`` (from padding) are never seen: the step at ``pos`` overwrites
its entry before attending, and the causal mask hides the later ones.

Learned positions cap the context: a prompt plus ``max_new_tokens`` longer than
``seq_len`` is refused (:class:`~scaling.errors.UsageError`), never slid. Rotary models
may run past ``seq_len`` (the cache is sized to the request), as far as memory allows: a
request whose buffers (:func:`scaling.evaluation.forward_bytes`: KV cache, the prefill's logits and attention
scores) would take more than half of the device's memory is refused before any compute.

Strategies (:class:`Sampling`): greedy (argmax); otherwise logits / temperature, then
top-k (keep the k largest), then top-p (keep the smallest set of most likely tokens
whose probability reaches p), then a categorical draw keyed by ``fold_in(seed, pos)``:
the same seed, prompts and model give the same tokens.

Beam search is :mod:`scaling.inference.beam`'s; it lays out, prefills and steps the model
with the functions here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import SEED_MAX, ModelConfig
from scaling.errors import UsageError
from scaling.evaluation import check_memory, token_nll
from scaling.model import GPT, init_cache

NEG = -1e30  # a score no real hypothesis reaches


@dataclass(frozen=True)
class Sampling:
    """How logits become a token. ``greedy`` (or ``temperature == 0``) takes the argmax;
    ``top_k == 0`` and ``top_p == 1`` switch those filters off."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:  # NaN fails this too
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


GREEDY = Sampling(greedy=True)


# ----------------------------------------------------------------------------- logits -> tokens


def filter_logits(logits_bv: jax.Array, sampling: Sampling) -> jax.Array:
    """Temperature, then top-k, then top-p: the logits with every excluded token at -inf."""
    x = logits_bv.astype(jnp.float32) / max(sampling.temperature, 1e-6)
    b, v = x.shape
    rows = jnp.arange(b)[:, None]
    if 0 < sampling.top_k < v:
        _, idx_bk = jax.lax.top_k(x, sampling.top_k)
        keep = jnp.zeros((b, v), bool).at[rows, idx_bk].set(True)
        x = jnp.where(keep, x, -jnp.inf)
    if sampling.top_p < 1.0:
        order_bv = jnp.argsort(-x, axis=-1)
        probs_bv = jax.nn.softmax(jnp.take_along_axis(x, order_bv, axis=-1), axis=-1)
        before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv  # probability of the more likely tokens
        keep_sorted = before_bv < sampling.top_p  # the most likely token is always kept
        keep = jnp.zeros((b, v), bool).at[rows, order_bv].set(keep_sorted)
        x = jnp.where(keep, x, -jnp.inf)
    return x


def choose(logits_bv: jax.Array, sampling: Sampling, key: jax.Array) -> jax.Array:
    if sampling.is_greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_bv, sampling), axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- buffers


def buffer_length(cfg: ModelConfig, total: int) -> int:
    """Length of the token buffer and KV cache for sequences of up to ``total`` tokens."""
    if cfg.position == "learned" and total > cfg.seq_len:
        raise UsageError(
            f"prompt plus new tokens ({total}) exceed the model's context of {cfg.seq_len} tokens "
            f"(learned positions); shorten the prompt or lower --max-new-tokens"
        )
    t = -(-total // 128) * 128
    return min(t, cfg.seq_len) if total <= cfg.seq_len else t


def plan_buffer(cfg: ModelConfig, longest_prompt: int, max_new_tokens: int, rows: int) -> int:
    """The buffer length of a decode (:func:`buffer_length`), refused before any compute when
    it exceeds a learned-position context or would not fit in memory (:func:`check_memory`)."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    T = buffer_length(cfg, longest_prompt + max_new_tokens)
    check_memory(cfg, rows, T, "decoding", "--max-new-tokens, --beam or the number of prompts")
    return T


def layout_prompts(cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int, width: int = 1):
    """The prompts checked and laid into a (B, T) token buffer, their lengths, and the shortest
    length; T is planned for ``width`` rows per prompt (beams)."""
    if not prompts:
        raise UsageError("no prompts given")
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
        raise UsageError("every prompt needs at least one token")
    for p in prompts:
        if max(p) >= cfg.vocab_size or min(p) < 0:
            raise UsageError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    T = plan_buffer(cfg, max(lens), max_new_tokens, len(prompts) * width)
    buf = np.zeros((len(prompts), T), np.int32)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = p
    return jnp.asarray(buf), jnp.asarray(lens, jnp.int32), min(lens)


@functools.partial(jax.jit, static_argnames=("cfg", "use_cache"))
def prefill(cfg: ModelConfig, params, buf_bT: jax.Array, n: jax.Array, use_cache: bool):
    """Logits of position ``n`` (from the tokens before it) and the cache, in one call over the
    whole buffer: the cache then holds every prompt position (and, past them, entries that
    decoding overwrites before any query can see them). ``n`` is traced: one compilation
    serves every prompt length."""
    model = GPT(cfg)
    if not use_cache:
        logits_bTv, cache = model.apply({"params": params}, buf_bT), None
    else:
        cache = init_cache(cfg, buf_bT.shape[0], buf_bT.shape[1])
        logits_bTv, cache = model.apply({"params": params}, buf_bT, cache=cache, cache_index=0)
    return jax.lax.dynamic_index_in_dim(logits_bTv, n - 1, 1, keepdims=False), cache


def next_logits(cfg: ModelConfig, params, cache, buf_bT: jax.Array, pos: jax.Array):
    """Logits of position ``pos + 1`` once ``buf_bT[:, pos]`` holds the token at ``pos``."""
    model = GPT(cfg)
    if cache is None:
        return jax.lax.dynamic_index_in_dim(model.apply({"params": params}, buf_bT), pos, 1, keepdims=False), None
    tok_b1 = jax.lax.dynamic_slice_in_dim(buf_bT, pos, 1, axis=1)
    logits_b1v, cache = model.apply({"params": params}, tok_b1, cache=cache, cache_index=pos)
    return logits_b1v[:, 0], cache


# ----------------------------------------------------------------------------- sampling / greedy


@dataclass(frozen=True)
class Sequences:
    """tokens: (B, T) prompt then generated ids; lengths: tokens used per row (the
    end-of-text token, when emitted, is included); n_new: generated tokens per row."""

    tokens: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray

    @property
    def n_new(self) -> np.ndarray:
        return self.lengths - self.prompt_lengths

    def new_tokens(self, i: int) -> list[int]:
        return self.tokens[i, self.prompt_lengths[i] : self.lengths[i]].tolist()

    def sequence(self, i: int) -> list[int]:
        return self.tokens[i, : self.lengths[i]].tolist()


@dataclass(frozen=True)
class Generation(Sequences):
    """Sampled or greedy sequences; logits: (B, T, V) the logits each position was chosen
    from (``return_logits``)."""

    logits: np.ndarray | None = None


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "return_logits"))
def _decode_loop(
    cfg: ModelConfig,
    params,
    buf_bT,
    plen_b,
    start,
    logits_bv,
    cache,
    max_new,
    eot,
    key,
    *,
    sampling: Sampling,
    return_logits: bool,
):
    b, T = buf_bT.shape
    all_logits = jnp.zeros((b, T, logits_bv.shape[-1]), jnp.float32) if return_logits else None

    def cond(c):
        pos, done = c[0], c[3]
        return (pos < T) & ~jnp.all(done)

    def body(c):
        pos, buf, logits, done, length, cache, rec = c
        forced = pos < plen_b
        picked = choose(logits, sampling, jax.random.fold_in(key, pos))
        tok = jnp.where(forced, buf[:, pos], jnp.where(done, jnp.maximum(eot, 0), picked))
        if rec is not None:
            rec = jax.lax.dynamic_update_index_in_dim(rec, logits, pos, 1)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, pos, 1)
        generated = ~forced & ~done
        length = jnp.where(generated, pos + 1, length)
        done = done | (generated & ((tok == eot) | (pos + 1 - plen_b >= max_new)))
        logits, cache = next_logits(cfg, params, cache, buf, pos)
        return pos + 1, buf, logits, done, length, cache, rec

    done = jnp.zeros((b,), bool)
    c = (start, buf_bT, logits_bv, done, plen_b, cache, all_logits)
    _, buf, _, _, length, _, rec = jax.lax.while_loop(cond, body, c)
    return buf, length, rec


def generate(
    cfg: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    sampling: Sampling = GREEDY,
    seed: int = 0,
    eot: int | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
) -> Generation:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens, stopping a
    row at ``eot`` (None: never). Batched over prompts; prompts may differ in length."""
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    buf, plen, n = layout_prompts(cfg, prompts, max_new_tokens)
    logits, cache = prefill(cfg, params, buf, jnp.int32(n), use_cache)
    out, length, rec = _decode_loop(
        cfg,
        params,
        buf,
        plen,
        jnp.int32(n),
        logits,
        cache,
        jnp.int32(max_new_tokens),
        jnp.int32(-1 if eot is None else eot),
        jax.random.key(seed),
        sampling=sampling,
        return_logits=return_logits,
    )
    out, length, plen = jax.device_get((out, length, plen))
    return Generation(
        np.asarray(out), np.asarray(length), np.asarray(plen), None if rec is None else np.asarray(jax.device_get(rec))
    )


# ----------------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnames=("cfg",))
def _nll_jit(cfg: ModelConfig, params, ids_bT: jax.Array) -> jax.Array:
    return token_nll(GPT(cfg), params, ids_bT)


def sequence_logprob(cfg: ModelConfig, params, prompt: Sequence[int], continuation: Sequence[int]) -> float:
    """log p(continuation | prompt) by one uncached forward pass (a reference for tests and beams)."""
    ids = list(prompt) + list(continuation)
    buf = np.zeros((1, buffer_length(cfg, len(ids))), np.int32)
    buf[0, : len(ids)] = ids
    nll = np.asarray(_nll_jit(cfg, params, jnp.asarray(buf)))[0]  # nll[j]: -log p(ids[j + 1] | ids[:j + 1])
    return float(-nll[len(prompt) - 1 : len(ids) - 1].sum())
