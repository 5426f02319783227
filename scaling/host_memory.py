"""The host allocator policy of a process that trains or evaluates: memory it frees stays with it.

On a CPU, XLA allocates each execution's temporary buffer (every activation a step keeps for
its backward pass: hundreds of MB at 6 layers x 256 wide) with ``malloc`` and frees it when the
step ends. glibc's defaults hand such a block back to the kernel on ``free`` (``mmap`` above
its threshold, heap trimming below it), and a block that a pool thread allocates lives in that
thread's arena, whose heaps cannot hold more than 64 MB, so glibc maps it afresh even when
``mmap`` is turned off. Every step then faults in and zeroes its buffer page by page, and the
kernel's share of a step's time grows with the model.

The ``retain`` policy (the default) sets glibc's ``mallopt`` so that every thread allocates
from the main heap (one arena), nothing is served by ``mmap`` and the heap is never trimmed:
a step reuses the pages its predecessor freed. The process keeps its high-water mark of host
memory, as PyTorch's and XLA's caching allocators do on accelerators. ``SCALING_HOST_MALLOC``
chooses: ``retain`` or ``system`` (glibc's defaults). The policy changes where memory comes
from, never what is computed. Other C libraries (macOS, musl) keep their own allocator.

:func:`apply` is idempotent; call it before the first computation. Threads that allocated
before it keep their arenas. :func:`glibc_tunables` gives the same settings as a
``GLIBC_TUNABLES`` value, for a process that is not this package's (a baseline's).
"""

from __future__ import annotations

import ctypes
import os
import platform

from scaling.errors import UsageError

ENV = "SCALING_HOST_MALLOC"
POLICIES = ("retain", "system")
DEFAULT = "retain"

# (mallopt parameter, value, GLIBC_TUNABLES name): malloc.h's M_ARENA_MAX, M_MMAP_MAX,
# M_TRIM_THRESHOLD and M_TOP_PAD.
RETAIN_SETTINGS: tuple[tuple[int, int, str], ...] = (
    (-8, 1, "glibc.malloc.arena_max"),
    (-4, 0, "glibc.malloc.mmap_max"),
    (-1, 2**31 - 1, "glibc.malloc.trim_threshold"),
    (-2, 64 << 20, "glibc.malloc.top_pad"),
)

_applied: str | None = None


def policy() -> str:
    """The policy ``SCALING_HOST_MALLOC`` names (``retain`` when unset); a bad value is a
    :class:`UsageError`."""
    name = os.environ.get(ENV, "").strip().lower() or DEFAULT
    if name not in POLICIES:
        raise UsageError(f"{ENV}={name!r}: expected one of {', '.join(POLICIES)}")
    return name


def is_glibc() -> bool:
    """Whether this process's C library is glibc (whose ``mallopt`` the policy sets)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def glibc_tunables() -> str:
    """The ``retain`` settings as a ``GLIBC_TUNABLES`` value."""
    return ":".join(f"{name}={value}" for _, value, name in RETAIN_SETTINGS)


def apply() -> str:
    """Set the policy ``SCALING_HOST_MALLOC`` names for this process; returns what is in force:
    ``retain``, or ``system`` (asked for, or not glibc)."""
    global _applied
    name = policy()
    if _applied is not None:
        return _applied
    if name == "retain" and is_glibc():
        libc = ctypes.CDLL(None)
        for param, value, tunable in RETAIN_SETTINGS:
            if libc.mallopt(param, value) != 1:
                raise RuntimeError(f"glibc refused mallopt for {tunable}={value}")
    else:
        name = "system"
    _applied = name
    return name


def in_force() -> str:
    """The policy this process runs under: what :func:`apply` set, else ``system``."""
    return _applied or "system"
