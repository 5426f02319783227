"""Joining a multi-process (multi-host) run before any JAX computation."""

from __future__ import annotations

import os

import jax

from scaling.config import Config
from scaling.errors import UsageError


def setup_distributed(cfg: Config) -> None:
    """Join a multi-process run (``--dist.*`` or JAX's environment variables); on CPUs the
    processes exchange data through gloo."""
    if jax.distributed.is_initialized():
        return
    if cfg.dist.num_processes > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not cfg.dist.coordinator and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise UsageError("dist.num_processes > 1 needs --dist.coordinator HOST:PORT")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if cfg.dist.coordinator:
            kwargs = dict(
                coordinator_address=cfg.dist.coordinator,
                num_processes=cfg.dist.num_processes,
                process_id=cfg.dist.process_id,
            )
        jax.distributed.initialize(**kwargs)
