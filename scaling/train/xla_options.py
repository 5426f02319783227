"""The XLA compile options of the train and evaluation programs: which library runs XLA's dot
products on a CPU (the model's dense products themselves go to OpenBLAS where ``model.dense``
resolves to blas, :mod:`scaling.model.cpu_dense`; these options then govern the dots left to XLA).

XLA's CPU backend can hand a dot to YNNPACK (this jaxlib's default), to Eigen, or to oneDNN's
matmul. ``SCALING_CPU_DOTS`` chooses: ``xla`` (the default: XLA's own choice), ``eigen``
(YNNPACK's fusions off) or ``onednn`` (oneDNN matmul custom calls).
``python -m benchmarks.cpu_levers`` times the train step with each against PyTorch's in one
process, and ``python -m benchmarks.cli_vs_torch --dots xla,eigen`` the training CLI with each.
The choice is fixed per process and never depends on timing, so a resumed run computes exactly
what an unbroken one does; an option this jaxlib does not know is dropped.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from scaling.errors import UsageError

ENV = "SCALING_CPU_DOTS"
CPU_DOTS: dict[str, dict | None] = {
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "xla": None,
    "onednn": {"xla_cpu_experimental_onednn_custom_call": True},
}
DEFAULT = "xla"


def cpu_dots() -> str:
    """The dot library ``SCALING_CPU_DOTS`` names (``xla`` when unset)."""
    name = os.environ.get(ENV, "").strip().lower() or DEFAULT
    if name not in CPU_DOTS:
        raise UsageError(f"{ENV}={name!r}: expected one of {', '.join(CPU_DOTS)}")
    return name


@functools.cache
def _supported(name: str) -> bool:
    """Whether this jaxlib accepts the options of ``name`` (a trivial program compiled with them)."""
    try:
        x = jax.ShapeDtypeStruct((2, 2), jnp.float32)
        jax.jit(jnp.matmul).lower(x, x).compile(compiler_options=CPU_DOTS[name])
    except Exception:  # an unknown option or value: XLA raises its own error types
        return False
    return True


def program_options() -> dict | None:
    """The ``compiler_options`` of the train and evaluation programs (None: XLA's defaults)."""
    if jax.default_backend() != "cpu":
        return None
    name = cpu_dots()
    options = CPU_DOTS[name]
    return dict(options) if options and _supported(name) else None
