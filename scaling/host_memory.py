"""The host allocator policy of a process that trains or evaluates: memory it frees stays with it.

On a CPU, XLA allocates each execution's temporary buffer (the activations a step keeps for
its backward pass) with ``malloc`` and frees it when the step ends. Under glibc's defaults a
block of more than 32 MB is always mapped with ``mmap`` and unmapped on ``free``, and a smaller
one is often handed back by heap trimming, so every step faults in and zeroes its buffer page
by page again, in the kernel's time.

``SCALING_HOST_MALLOC`` chooses:

- ``retain`` (the default): nothing is served by ``mmap`` and the heaps are never trimmed, so
  a step reuses the pages its predecessor freed. Each thread keeps its own arena; an arena
  other than the main one holds at most 64 MB, so glibc still maps a larger block that a pool
  thread asks for afresh.
- ``one-arena``: ``retain`` with every thread allocating from the main heap, which grows
  without that limit: steps whose buffers pass 64 MB reuse them too, at the price of one lock
  for every thread's allocations (compiling, which allocates from many threads, is slower).
- ``system``: glibc's defaults.

The process keeps its high-water mark of host memory, as the caching allocators of PyTorch and
XLA do on accelerators. A policy changes where memory comes from, never what is computed.
Other C libraries (macOS, musl) keep their own allocator. :func:`apply` is idempotent; call it
before the first computation (threads that allocated before it keep their arenas).
:func:`glibc_tunables` gives a policy's settings as a ``GLIBC_TUNABLES`` value, for a process
that is not this package's (a baseline's).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform

from scaling.errors import UsageError

ENV = "SCALING_HOST_MALLOC"
DEFAULT = "retain"

# (mallopt parameter, its value, GLIBC_TUNABLES name, its value) per policy: malloc.h's
# M_MMAP_MAX, M_TRIM_THRESHOLD (-1: never trim; a finite threshold is crossed once the heap's
# free top grows past it, as it does when a model's step buffers run to GBs), M_TOP_PAD and
# M_ARENA_MAX.
_RETAIN = (
    (-4, 0, "glibc.malloc.mmap_max", 0),
    (-1, -1, "glibc.malloc.trim_threshold", 2**63 - 1),
    (-2, 64 << 20, "glibc.malloc.top_pad", 64 << 20),
)
SETTINGS: dict[str, tuple[tuple[int, int, str, int], ...]] = {
    "retain": _RETAIN,
    "one-arena": (*_RETAIN, (-8, 1, "glibc.malloc.arena_max", 1)),
    "system": (),
}
POLICIES = tuple(SETTINGS)

_applied: str | None = None


def policy() -> str:
    """The policy ``SCALING_HOST_MALLOC`` names (``retain`` when unset); a bad value is a
    :class:`UsageError`."""
    name = os.environ.get(ENV, "").strip().lower() or DEFAULT
    if name not in POLICIES:
        raise UsageError(f"{ENV}={name!r}: expected one of {', '.join(POLICIES)}")
    return name


def policy_list(text: str) -> list[str]:
    """The policies a comma-separated list names, for a command-line flag (``type=``): an empty
    list or an unknown name is an ``argparse.ArgumentTypeError``, which argparse reports on one
    line with exit code 2."""
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not names or any(x not in POLICIES for x in names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(POLICIES)}")
    return names


def is_glibc() -> bool:
    """Whether this process's C library is glibc (whose ``mallopt`` the policy sets)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def glibc_tunables(name: str) -> str:
    """Policy ``name``'s settings as a ``GLIBC_TUNABLES`` value (empty for ``system``)."""
    return ":".join(f"{tunable}={value}" for _, _, tunable, value in SETTINGS[name])


def apply() -> str:
    """Set the policy ``SCALING_HOST_MALLOC`` names for this process; returns what is in force
    (``system`` where the C library is not glibc)."""
    global _applied
    name = policy()
    if _applied is not None:
        return _applied
    if not is_glibc():
        name = "system"
    if SETTINGS[name]:
        libc = ctypes.CDLL(None)
        for param, value, tunable, _ in SETTINGS[name]:
            if libc.mallopt(param, value) != 1:
                raise RuntimeError(f"glibc refused mallopt for {tunable}={value}")
    _applied = name
    return name


def in_force() -> str:
    """The policy this process runs under: what :func:`apply` set, else ``system``."""
    return _applied or "system"
