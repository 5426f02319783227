"""A trained run's parameters, read from the latest restorable checkpoint of its directory
for inference and scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from scaling import run_dir as run_dir_lib
from scaling import sharding as sh
from scaling.checkpoint import Checkpointer
from scaling.config import Config, MeshConfig
from scaling.errors import UsageError
from scaling.train.loop import steps_for
from scaling.train.programs import ShapePrograms

__all__ = ["load_run"]


def load_run(run_dir: str | Path) -> tuple[Config, Any]:
    """(config, parameters) of the latest restorable checkpoint of a training run directory.

    Parameters come back replicated on the current devices, ready for inference. The
    checkpoints are opened read-only: a run still training there is not disturbed.
    """
    run_dir = Path(run_dir)
    cfg = run_dir_lib.read_config(run_dir)
    mesh = sh.make_mesh(sh.mesh_shape(MeshConfig(), jax.device_count()))
    programs = ShapePrograms(cfg, mesh, steps_for(cfg))
    ckpt_dir = run_dir_lib.checkpoints_path(run_dir)
    ckpt = Checkpointer(ckpt_dir, cfg.checkpoint, read_only=True)
    try:
        restored = ckpt.restore_latest(programs.abstract_state)
    finally:
        ckpt.close()
    if restored is None:
        raise UsageError(f"no checkpoint under {ckpt_dir}")
    return cfg, restored[0].params
