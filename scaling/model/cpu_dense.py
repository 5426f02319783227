"""The model's dense products on a CPU through OpenBLAS's sgemm (an XLA FFI custom call).

``kernels/dense_cpu.cc`` computes ``op(a) @ op(b)`` for float32 matrices, op an optional
transpose, with the OpenBLAS that the ``scipy-openblas32`` package ships (the build numpy and
scipy are made with: one library whose kernels are chosen at load time for the CPU at hand,
AVX-512 or AVX2, Intel or AMD), single-threaded per call and cut into one slab of the output per
thread of XLA's intra-op pool. :func:`matmul` wraps it with its gradient (each product's
gradients are two more products, each one call), and :func:`dot_general` stands in for
``lax.dot_general`` in ``flax.linen.Dense``. ``model.dense`` chooses it
(:func:`dense_kind`); ``python -m benchmarks.cpu_levers`` and
``python -m benchmarks.cli_vs_torch`` measure it against XLA's own dots.

The library is built on first use like the attention kernel (:mod:`.kernel_cache`: the machine's
C++ compiler, ``-march=native``, a private verified cache), linked against the package's
library by its absolute path. :func:`unavailable` says why it cannot be used (the package
missing, no compiler, a failed build).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.model import kernel_cache

try:
    import scipy_openblas32
except ImportError:  # a platform without its wheel: XLA's dots instead
    scipy_openblas32 = None

SOURCE = kernel_cache.KERNELS / "dense_cpu.cc"
_TARGET = "scaling_dense_gemm"
_SYMBOL = "ScalingDenseGemm"


def _args() -> tuple[str, ...]:
    lib_dir = scipy_openblas32.get_lib_dir()
    return (
        *kernel_cache.FLAGS,
        "-I",
        scipy_openblas32.get_include_dir(),
        f"-L{lib_dir}",
        f"-Wl,-rpath,{lib_dir}",
        # the package's version in the library's name, so that an upgrade rebuilds
        f"-DSCALING_OPENBLAS={scipy_openblas32.__version__}",
    )


def _link() -> tuple[str, ...]:
    return (f"-l{scipy_openblas32.get_library()}",)


def library_path(compiler: str) -> Path:
    return kernel_cache.library_path("dense_cpu", compiler, SOURCE, _args() + _link())


def _build(compiler: str, out: Path) -> None:
    # the library to link comes after the source on the command line
    kernel_cache.compile_library(compiler, SOURCE, _args(), out, after=_link())


@kernel_cache.once
def unavailable() -> str | None:
    """None once the product is built, verified, loaded and registered with XLA; else why it
    cannot be (one line)."""
    if scipy_openblas32 is None:
        return "the scipy-openblas32 package is not installed"
    cxx = kernel_cache.compiler()
    if cxx is None:
        return "no C++ compiler found (set CXX)"
    try:
        lib = kernel_cache.load(library_path(cxx), functools.partial(_build, cxx), (_SYMBOL,))
    except kernel_cache.KernelCacheError as e:
        return str(e)
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
    return None


def may_use(cfg: ModelConfig, n_devices: int) -> bool:
    """Whether a model of ``cfg`` on a mesh of ``n_devices`` can take the product (where it
    builds): ``model.dense`` auto or blas, on a CPU backend, float32, at most one device."""
    on_cpu = jax.default_backend() == "cpu"
    return cfg.dense in ("auto", "blas") and on_cpu and cfg.dtype == "float32" and n_devices <= 1


def dense_kind(cfg: ModelConfig, n_devices: int | None = None) -> str:
    """``model.dense`` resolved for a mesh of ``n_devices`` (None: the mesh the model is traced
    under): auto takes blas (OpenBLAS through the FFI) on a CPU backend for float32 on at most one
    device where it builds, else xla. The product's custom call runs on one device's arrays, so a
    mesh of several devices takes XLA's dots (:func:`check_dense` refuses an explicit blas there)."""
    if cfg.dense != "auto":
        return cfg.dense
    if n_devices is None:
        mesh = jax.sharding.get_abstract_mesh()
        n_devices = 1 if mesh.empty else mesh.size
    if not may_use(cfg, n_devices):
        return "xla"
    reason = unavailable()
    if reason is None:
        return "blas"
    _note_fallback(reason)
    return "xla"


@functools.cache
def _note_fallback(reason: str) -> None:
    print(f"note: the CPU dense product is unavailable ({reason}); using XLA's dots", file=sys.stderr)


def check_dense(cfg: ModelConfig, n_devices: int) -> None:
    """Refuse ``model.dense=blas`` where it cannot run, before any compute."""
    if cfg.dense != "blas":
        return
    if jax.default_backend() != "cpu":
        raise UsageError(f"model.dense=blas runs on a CPU backend only, not {jax.default_backend()}")
    if n_devices > 1:
        raise UsageError(f"model.dense=blas runs on a mesh of one device, not {n_devices}")
    reason = unavailable()
    if reason is not None:
        raise UsageError(f"model.dense=blas is unavailable: {reason}")


def _gemm(a, b, ta: bool, tb: bool):
    m = a.shape[1] if ta else a.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    call = jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")
    return call(a, b, trans_a=np.int32(ta), trans_b=np.int32(tb))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _product(a, b, ta: bool, tb: bool):
    return _gemm(a, b, ta, tb)


def _product_fwd(a, b, ta, tb):
    return _gemm(a, b, ta, tb), (a, b)


def _product_bwd(ta, tb, res, dc):
    a, b = res
    # c = op(a) op(b): d op(a) = dc op(b)^T and d op(b) = op(a)^T dc, each written as one product
    # of the stored operands in the layout a and b have.
    da = _gemm(b, dc, tb, True) if ta else _gemm(dc, b, False, not tb)
    db = _gemm(dc, a, True, ta) if tb else _gemm(a, dc, not ta, False)
    return da, db


_product.defvjp(_product_fwd, _product_bwd)


def matmul(a: jax.Array, b: jax.Array, *, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """``op(a) @ op(b)`` of float32 matrices by OpenBLAS, differentiable in both operands."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"the CPU dense product is unavailable: {reason}")
    if a.ndim != 2 or b.ndim != 2 or a.dtype != jnp.float32 or b.dtype != jnp.float32:
        raise ValueError(f"matmul takes float32 matrices, got {a.dtype}{a.shape} and {b.dtype}{b.shape}")
    k_a = a.shape[0] if trans_a else a.shape[1]
    k_b = b.shape[1] if trans_b else b.shape[0]
    if k_a != k_b:
        raise ValueError(f"matmul: contracting sizes differ ({k_a} and {k_b})")
    return _product(a, b, bool(trans_a), bool(trans_b))


def dense(x: jax.Array, w: jax.Array, axes: int = 1) -> jax.Array:
    """The last ``axes`` axes of ``x`` (any leading axes) contracted with the first ``axes`` of
    ``w`` (``jnp.tensordot(x, w, axes)``) by OpenBLAS."""
    lead, out = x.shape[: x.ndim - axes], w.shape[axes:]
    k = math.prod(w.shape[:axes])
    y = matmul(x.reshape(-1, k), w.reshape(k, -1))
    return y.reshape(*lead, *out)


def dense_t(x: jax.Array, w_nk: jax.Array) -> jax.Array:
    """``x @ w_nk.T`` over the last axis of ``x`` (a tied output embedding) by OpenBLAS."""
    lead = x.shape[:-1]
    y = matmul(x.reshape(-1, x.shape[-1]), w_nk, trans_b=True)
    return y.reshape(*lead, w_nk.shape[0])


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for ``flax.linen.Dense``: its product (the last axis of the input
    against the kernel's first) by OpenBLAS, anything else by XLA."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (
        tuple(lc) == (lhs.ndim - 1,)
        and tuple(rc) == (0,)
        and not lb
        and not rb
        and rhs.ndim == 2
        and lhs.dtype == rhs.dtype == jnp.float32
    ):
        return dense(lhs, rhs)
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
    )
