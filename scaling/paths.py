"""Where the shared data and the product's own caches live (no absolute paths).

- ``SCALING_DATA_DIR``: the directory holding the corpora (default ``../shared/data``
  beside the repository root).
- ``SCALING_CACHE_DIR``: token caches, trained tokenizers, difficulty scores and the
  JAX compilation cache (default ``~/.cache/scaling``); never written next to the data.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return REPO_ROOT.parent / "shared"


def data_dir() -> Path:
    env = os.environ.get("SCALING_DATA_DIR")
    return Path(env) if env else shared_dir() / "data"


def cache_dir() -> Path:
    env = os.environ.get("SCALING_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "scaling"
