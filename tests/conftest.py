"""Pytest set-up shared by every test: full float32 matmuls, quick compiles, a private cache
dir and JAX's persistent compilation cache in it, shared by the test processes and the CLIs
they start.

Helpers that tests import live in :mod:`tests.helpers`."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    # The tests check float32 maths against references; on a GPU, float32 dots default to
    # TF32 (about 3 significant digits). Ask for full float32 here and in CLI subprocesses.
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    # The tests' models are tiny: compiling, not running, is most of their time, and LLVM's
    # optimiser most of a CPU compile. Skip it unless XLA_FLAGS names a level of its own.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    # Token caches and trained tokenizers of the test session go to a private directory.
    if "SCALING_CACHE_DIR" not in os.environ:
        os.environ["SCALING_CACHE_DIR"] = tempfile.mkdtemp(prefix="scaling-test-cache-")
    # On from the first compilation of the process, as every CLI turns it on: JAX decides once
    # per process whether to use the cache. Its hits return what a fresh compile would.
    from scaling import compile_cache  # here: jax reads the precision above when imported

    compile_cache.enable()
