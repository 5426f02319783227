"""Causal and prefix-bidirectional attention of fresh sequences through a C++ CPU kernel (XLA
FFI custom calls).

``kernels/causal_attention_cpu.cc`` holds the forward pass (output and each query's
log-sum-exp) and a flash-attention-style backward pass, register-tiled over the head
dimension and spread over XLA's intra-op threads one (sequence, head) pair at a time. It
stands in for the XLA-written attention (``scaling.model.attention``) on CPUs because it is faster
there; ``python -m benchmarks.attention_check --time`` measures both on the machine at hand.
Each sequence carries a prefix length (:func:`prefix_attention`): its first ``prefix``
positions see each other (bidirectional), the rest attend causally; causal attention is
prefix 0, full bidirectional attention (a masked LM) prefix T.

The library is compiled on first use with the machine's C++ compiler (``$CXX``, else
``g++``/``c++``/``clang++``; ``-O3 -march=native``) into ``SCALING_CACHE_DIR/kernels``,
named by a hash of the source, the flags, the XLA FFI headers and the CPU's feature flags,
and loaded from there afterwards through :mod:`scaling.model.kernel_cache`, which loads only a
library it built itself (a private directory, a SHA-256 checked before loading, a rebuild on
any failure to load). :func:`unavailable` says why the kernel cannot be used (no compiler, a
failed build, an unsafe cache directory); ``model.attention=auto`` then falls back to XLA's
attention.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from scaling import sharding as sh
from scaling.config import CPU_KERNEL_HEAD_DIMS as HEAD_DIMS
from scaling.model import kernel_cache

SOURCE = kernel_cache.KERNELS / "causal_attention_cpu.cc"
FLAGS = kernel_cache.FLAGS
_TARGETS = {"fwd": "scaling_causal_attention_fwd", "bwd": "scaling_causal_attention_bwd"}
_SYMBOLS = {"fwd": "ScalingCausalAttentionFwd", "bwd": "ScalingCausalAttentionBwd"}
compiler = kernel_cache.compiler


def library_path(compiler: str) -> Path:
    """Where the built library for this source, compiler, flags, jaxlib and CPU lives."""
    return kernel_cache.library_path("causal_attention_cpu", compiler, SOURCE, FLAGS)


def _build(compiler: str, out: Path) -> None:
    """Compile the kernel into ``out`` (a temporary file the cache then verifies and publishes)."""
    kernel_cache.compile_library(compiler, SOURCE, FLAGS, out)


@kernel_cache.once
def unavailable() -> str | None:
    """None once the kernel is built, verified, loaded and registered with XLA; else why it
    cannot be (one line)."""
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found (set CXX)"
    try:
        lib = kernel_cache.load(library_path(cxx), functools.partial(_build, cxx), _SYMBOLS.values())
    except kernel_cache.KernelCacheError as e:
        return str(e)
    for part, target in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[part])), platform="cpu")
    return None


def supports(head_dim: int, dtype) -> bool:
    """Whether the kernel handles this head size and dtype (float32 only)."""
    return head_dim in HEAD_DIMS and jnp.dtype(dtype) == jnp.float32


def _forward_local(q_bthd, k_bthd, v_bthd, prefix_b):
    b, t, h, _ = q_bthd.shape
    out = (jax.ShapeDtypeStruct(q_bthd.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    return jax.ffi.ffi_call(_TARGETS["fwd"], out, vmap_method="sequential")(q_bthd, k_bthd, v_bthd, prefix_b)


def _backward_local(q_bthd, k_bthd, v_bthd, prefix_b, o_bthd, lse_bht, do_bthd):
    grad = jax.ShapeDtypeStruct(q_bthd.shape, jnp.float32)
    return jax.ffi.ffi_call(_TARGETS["bwd"], (grad, grad, grad), vmap_method="sequential")(
        q_bthd, k_bthd, v_bthd, prefix_b, o_bthd, lse_bht, do_bthd
    )


_BTHD = ("act_batch", "act_seq", "act_heads", None)
_BHT = ("act_batch", "act_heads", "act_seq")
_B = ("act_batch",)


@jax.custom_vjp
def _attention(q_bthd, k_bthd, v_bthd, prefix_b):
    return _attention_fwd(q_bthd, k_bthd, v_bthd, prefix_b)[0]


def _attention_fwd(q_bthd, k_bthd, v_bthd, prefix_b):
    fwd = sh.shard_local(_forward_local, (_BTHD,) * 3 + (_B,), (_BTHD, _BHT))
    o_bthd, lse_bht = fwd(q_bthd, k_bthd, v_bthd, prefix_b)
    return o_bthd, (q_bthd, k_bthd, v_bthd, prefix_b, o_bthd, lse_bht)


def _attention_bwd(res, do_bthd):
    bwd = sh.shard_local(_backward_local, (_BTHD,) * 3 + (_B, _BTHD, _BHT, _BTHD), (_BTHD,) * 3)
    return (*bwd(*res, do_bthd), None)  # the prefix lengths are integers: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)


def causal_attention(q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array) -> jax.Array:
    """Causal softmax self-attention of fresh sequences, (batch, T, heads, head_dim) float32;
    each device runs the kernel on its own shard of the batch and heads."""
    return prefix_attention(q_bthd, k_bthd, v_bthd, jnp.zeros(q_bthd.shape[:1], jnp.int32))


def prefix_attention(q_bthd: jax.Array, k_bthd: jax.Array, v_bthd: jax.Array, prefix_b: jax.Array) -> jax.Array:
    """Softmax self-attention of fresh sequences where query i of sequence b sees key j when
    j <= i or j < prefix_b[b] (int32, clipped to [0, T]): causal for 0, bidirectional for T."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"the CPU attention kernel is unavailable: {reason}")
    if not supports(q_bthd.shape[-1], q_bthd.dtype):
        raise ValueError(
            f"the CPU attention kernel takes float32 with head_dim in {HEAD_DIMS}, "
            f"got {q_bthd.dtype} with head_dim {q_bthd.shape[-1]}"
        )
    return _attention(q_bthd, k_bthd, v_bthd, prefix_b.astype(jnp.int32))
