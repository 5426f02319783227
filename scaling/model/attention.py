"""Softmax attention kernels: causal, and under a prefix mask.

- :func:`causal_attention`: the plain masked softmax over every key, for decoding with a
  KV cache (queries at arbitrary absolute positions).
- :func:`blocked_causal_attention`: training-time attention of fresh sequences, written for
  CPUs in XLA (the fallback where the faster C++ kernel of ``scaling.model.cpu_attention``
  does not build or does not take the head size or dtype). The plain form's (batch, heads,
  T, T) score tensors do not fit in cache, so every softmax pass is a trip to memory. Here
  the batch is walked a few sequences at a time (``lax.map``), queries go in blocks that
  skip the score blocks above the diagonal, and the backward pass is written by hand
  (flash-attention style: it recomputes the probabilities from the saved log-sum-exp
  instead of storing them, and uses rowsum(dO * O) in place of a reduction over the
  scores), so every intermediate stays cache-sized.
- :func:`dot_product_attention`: ``jax.nn.dot_product_attention`` with its default
  implementation.
- :func:`prefix_attention`: ``jax.nn.dot_product_attention`` under :func:`prefix_mask`, the
  attention of the non-causal objectives (``train.objective``: a masked LM attends
  bidirectionally, prefix denoising bidirectionally within each sequence's prefix). It serves
  both the ``dot_product`` and the ``blocked`` settings (the blocked kernel skips the blocks
  above the diagonal, which a prefix needs); the C++ CPU kernel takes the prefix itself.

All take ``(batch, T, heads, head_dim)``, the layout the q/k/v projections write as plain
matmuls; the blocked kernel turns each chunk heads-major (as its batched dots want) inside
its loop, on cache-resident slices, rather than having the projections write a heads-major
layout.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

NEG_INF = -1e9
ATTN_BLOCK = 64  # query block of the blocked attention (blocks above the diagonal are skipped)


def causal_attention(q_bthd: jax.Array, k_bshd: jax.Array, v_bshd: jax.Array, q_pos_bt: jax.Array) -> jax.Array:
    """Softmax attention where the query at absolute position p sees keys at positions <= p.

    Keys are at absolute positions 0..S-1 (a fresh sequence or a cache); ``q_pos_bt`` are the
    queries' absolute positions.
    """
    hd = q_bthd.shape[-1]
    s = k_bshd.shape[1]
    scores_bhts = jnp.einsum("bthd,bshd->bhts", q_bthd, k_bshd, preferred_element_type=jnp.float32) / math.sqrt(hd)
    mask_bts = jnp.arange(s)[None, None, :] <= q_pos_bt[:, :, None]
    scores_bhts = jnp.where(mask_bts[:, None], scores_bhts, NEG_INF)
    probs_bhts = jax.nn.softmax(scores_bhts, axis=-1).astype(v_bshd.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs_bhts, v_bshd)


def dot_product_attention(q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q_bthd, k_bthd, v_bthd, is_causal=True)


def cudnn_attention(q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array) -> jax.Array:
    """Causal attention by cuDNN's fused kernel (NVIDIA GPUs; bfloat16 or float16)."""
    return jax.nn.dot_product_attention(q_bthd, k_bthd, v_bthd, is_causal=True, implementation="cudnn")


@functools.cache
def cudnn_unavailable() -> str | None:
    """Why :func:`cudnn_attention` cannot run on this process's default device (None: it
    compiles there): a tiny causal bfloat16 attention, forward and backward, is compiled once."""
    if jax.default_backend() != "gpu":
        return f"it needs an NVIDIA GPU, this backend is {jax.default_backend()}"
    x = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
    loss = lambda q, k, v: cudnn_attention(q, k, v).astype(jnp.float32).sum()  # noqa: E731
    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    except Exception as e:  # XLA and cuDNN raise their own error types
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    return None


def prefix_mask(t: int, prefix_b: jax.Array) -> jax.Array:
    """(B, T, T) boolean: query i of sequence b sees key j when j <= i or j < prefix_b[b] (so
    prefix 0 or 1 is the causal mask, prefix T the full one)."""
    i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    return (j <= i)[None] | (j[None] < prefix_b[:, None, None])


def prefix_attention(q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array, prefix_b: jax.Array) -> jax.Array:
    """Self-attention of fresh sequences under :func:`prefix_mask`."""
    mask_b1tt = prefix_mask(q_bthd.shape[1], prefix_b)[:, None]
    return jax.nn.dot_product_attention(q_bthd, k_bthd, v_bthd, mask=mask_b1tt)


def _blocks(t: int, block: int) -> list[tuple[int, int]]:
    """(start, end) of each query block; block i meets keys 0..end-1."""
    block = t if t <= block or t % block else block
    return [(i, i + block) for i in range(0, t, block)]


def _scores(q_chqd, k_chtd, start, end):
    s_chqs = jnp.einsum("chqd,chsd->chqs", q_chqd, k_chtd[:, :, :end], preferred_element_type=jnp.float32)
    mask_qs = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
    return jnp.where(mask_qs, s_chqs, NEG_INF)


def _forward(q_chtd, k_chtd, v_chtd, block):
    """Output and log-sum-exp of the scores for a chunk of sequences (q already scaled)."""
    outs, lses = [], []
    for start, end in _blocks(q_chtd.shape[2], block):
        s_chqs = _scores(q_chtd[:, :, start:end], k_chtd, start, end)
        max_chq = jnp.max(s_chqs, axis=-1)
        p_chqs = jnp.exp(s_chqs - max_chq[..., None])
        sum_chq = jnp.sum(p_chqs, axis=-1)
        o_chqd = jnp.einsum(
            "chqs,chsd->chqd", p_chqs.astype(v_chtd.dtype), v_chtd[:, :, :end], preferred_element_type=jnp.float32
        )
        outs.append((o_chqd / sum_chq[..., None]).astype(v_chtd.dtype))
        lses.append(max_chq + jnp.log(sum_chq))
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


def _backward(q_chtd, k_chtd, v_chtd, o_chtd, lse_cht, do_chtd, block):
    t = q_chtd.shape[2]
    delta_cht = jnp.sum(do_chtd.astype(jnp.float32) * o_chtd.astype(jnp.float32), axis=-1)
    dq, dk, dv = [], jnp.zeros(k_chtd.shape, jnp.float32), jnp.zeros(v_chtd.shape, jnp.float32)
    pad = lambda x, end: jnp.pad(x, ((0, 0), (0, 0), (0, t - end), (0, 0)))  # noqa: E731
    for start, end in _blocks(t, block):
        q_chqd, do_chqd = q_chtd[:, :, start:end], do_chtd[:, :, start:end]
        s_chqs = _scores(q_chqd, k_chtd, start, end)
        p_chqs = jnp.exp(s_chqs - lse_cht[:, :, start:end, None])
        dv = dv + pad(
            jnp.einsum("chqs,chqd->chsd", p_chqs.astype(do_chqd.dtype), do_chqd, preferred_element_type=jnp.float32),
            end,
        )
        dp_chqs = jnp.einsum("chqd,chsd->chqs", do_chqd, v_chtd[:, :, :end], preferred_element_type=jnp.float32)
        ds_chqs = (p_chqs * (dp_chqs - delta_cht[:, :, start:end, None])).astype(q_chtd.dtype)
        dq.append(jnp.einsum("chqs,chsd->chqd", ds_chqs, k_chtd[:, :, :end], preferred_element_type=jnp.float32))
        dk = dk + pad(jnp.einsum("chqs,chqd->chsd", ds_chqs, q_chqd, preferred_element_type=jnp.float32), end)
    return jnp.concatenate(dq, axis=2), dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked(q_ncthd, k_ncthd, v_ncthd, block):
    return _chunked_fwd(q_ncthd, k_ncthd, v_ncthd, block)[0]


def _heads_major(*xs):
    """(c, t, h, d) <-> (c, h, t, d), inside the loop, on cache-resident slices."""
    return [jnp.swapaxes(x, 1, 2) for x in xs]


def _chunked_fwd(q_ncthd, k_ncthd, v_ncthd, block):
    def body(x):
        o_chtd, lse_cht = _forward(*_heads_major(*x), block)
        return jnp.swapaxes(o_chtd, 1, 2), lse_cht

    o, lse = jax.lax.map(body, (q_ncthd, k_ncthd, v_ncthd))
    return o, (q_ncthd, k_ncthd, v_ncthd, o, lse)


def _chunked_bwd(block, res, do_ncthd):
    q, k, v, o, lse = res

    def body(x):
        q, k, v, o, lse, do = x
        return _heads_major(*_backward(*_heads_major(q, k, v, o), lse, *_heads_major(do), block))

    dq, dk, dv = jax.lax.map(body, (q, k, v, o, lse, do_ncthd))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def blocked_causal_attention(
    q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array, block: int = ATTN_BLOCK, chunk: int = 1
) -> jax.Array:
    """Causal self-attention of fresh sequences, ``chunk`` sequences at a time.

    ``chunk`` should be the number of batch shards (then every device takes one of its own
    sequences per iteration, and the batch sharding is kept). Mathematically identical to
    :func:`causal_attention` with positions 0..T-1, gradients included.
    """
    b, t, h, hd = q_bthd.shape
    chunk = math.gcd(b, chunk)
    # (b, ...) -> (b/chunk, chunk, ...) with row r = (i, j) <- sequence j * (b/chunk) + i, so a
    # batch split into `chunk` contiguous shards keeps one sequence of each shard per iteration.
    split = lambda x: jnp.swapaxes(x.reshape(chunk, b // chunk, t, h, hd), 0, 1)  # noqa: E731
    q = q_bthd * jnp.asarray(1.0 / math.sqrt(hd), q_bthd.dtype)
    out = _chunked(split(q), split(k_bthd), split(v_bthd), block)
    return jnp.swapaxes(out, 0, 1).reshape(b, t, h, hd)
