"""Where data and the product's own caches live (no absolute paths, nothing beside the checkout).

- ``SCALING_DATA_DIR``: the directory holding corpora (``tinyshakespeare/input.txt``,
  ``gutenberg/*.txt``, prepared ones). Unset, the named corpora come from the copy embedded in
  the package (:mod:`scaling.data.packaged`), and ``python -m experiments.prepare`` writes into
  ``$SCALING_CACHE_DIR/data``.
- ``SCALING_CACHE_DIR``: token caches, trained tokenizers, difficulty scores, the extracted
  embedded corpora and the JAX compilation cache (default ``~/.cache/scaling``); never written
  next to the data.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir_override() -> Path | None:
    """``SCALING_DATA_DIR`` when it is set (and not empty), else None."""
    env = os.environ.get("SCALING_DATA_DIR")
    return Path(env).expanduser() if env else None


def data_dir() -> Path:
    """The data directory: ``SCALING_DATA_DIR``, else ``data`` under the cache directory."""
    return data_dir_override() or cache_dir() / "data"


def cache_dir() -> Path:
    env = os.environ.get("SCALING_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scaling"
