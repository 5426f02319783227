"""Pytest set-up shared by every test: full float32 matmuls and a private cache dir.

Helpers that tests import live in :mod:`tests.helpers`."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    # The tests check float32 maths against references; on a GPU, float32 dots default to
    # TF32 (about 3 significant digits). Ask for full float32 here and in CLI subprocesses.
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    # Token caches and trained tokenizers of the test session go to a private directory.
    if "SCALING_CACHE_DIR" not in os.environ:
        os.environ["SCALING_CACHE_DIR"] = tempfile.mkdtemp(prefix="scaling-test-cache-")
