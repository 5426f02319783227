"""JAX's persistent compilation cache, so runs that compile the same program do not compile again.

The cache lives under the product's own cache directory, ``$SCALING_CACHE_DIR/jax-compile``
(default ``~/.cache/scaling/jax-compile``), never next to the data; ``SCALING_COMPILE_CACHE``
overrides the location, and ``SCALING_COMPILE_CACHE=off`` (or ``0``, ``false``) turns it off.
Every compilation is cached, however quick (JAX's defaults skip those under one second,
which on a CPU is most of a small model's programs).

A cache entry is keyed by the compiled program (its HLO), the compile options, the
devices and the JAX/XLA versions, so a hit returns exactly the code a fresh compile
would: results do not depend on whether the cache was warm. Two processes sharing the
directory (sweep shards) are safe: JAX writes each entry atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

from scaling.paths import cache_dir

ENV = "SCALING_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no", "none")


def cache_path() -> Path | None:
    """The directory the cache uses, or None when turned off by ``SCALING_COMPILE_CACHE``."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in _OFF:
        return None
    return Path(env).expanduser() if env else cache_dir() / "jax-compile"


def enable(path: str | Path | None = None) -> Path | None:
    """Turn the persistent compilation cache on (idempotent); returns its directory, or None
    when it is turned off or its directory cannot be made (the run then compiles everything,
    as without a cache). Call before the first compilation of the process."""
    target = Path(path) if path is not None else cache_path()
    if target is None:
        return None
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"warning: no compilation cache ({target}: {e.strerror or e})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return target


def entries(path: str | Path | None = None) -> int:
    """Number of cached executables (for reports and tests)."""
    target = Path(path) if path is not None else cache_path()
    if target is None or not target.is_dir():
        return 0
    return sum(1 for p in target.iterdir() if p.name.endswith("-cache"))
