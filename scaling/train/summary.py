"""The summary a training run writes to ``summary.json`` when it ends: its size, tokens and
FLOPs (three analytic counts and XLA's), losses, status, timing and layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from scaling import flops as flops_lib
from scaling import sharding as sh
from scaling.config import Config
from scaling.data import Batches
from scaling.train.branch import Branch
from scaling.train.step import TrainState

__all__ = ["run_summary"]


def run_summary(
    cfg: Config,
    steps: int,
    state: TrainState,
    *,
    status: str,
    val: tuple[float, float] | None,
    flops_per_token: dict,
    xla_flops_per_step: float,
    compile_s: float,
    compile_shared: bool,
    wall_s: float,
    tokens_per_s: float,
    recent_losses: Sequence[float],
    branched: Branch | None,
    batches: Batches,
    mesh_shape: dict[str, int],
) -> dict:
    """The summary of a run of ``steps`` steps that ended at ``state`` with ``status``
    (``val``: its last validation loss and bits per byte; ``recent_losses``: the last train
    losses, averaged as the final train loss; ``branched``: the branch point it started from)."""
    counts = flops_lib.param_counts(cfg.model)
    tokens = steps * cfg.train.batch_size * cfg.model.seq_len
    param_bytes = sh.bytes_per_device(state.params)
    state_bytes = sh.bytes_per_device((state.params, state.opt_state))
    tail = list(recent_losses)
    return {
        "n_params": counts["n_params"],
        "n_params_nonembed": counts["n_params_nonembed"],
        "tokens": tokens,
        "steps": steps,
        "steps_done": int(jax.device_get(state.step)),
        "flops_6nd": flops_per_token["6nd"] * tokens,
        "flops_kaplan": flops_per_token["kaplan"] * tokens,
        "flops_chinchilla": flops_per_token["chinchilla"] * tokens,
        "flops_xla": xla_flops_per_step * steps,
        "final_train_loss": float(np.mean(tail)) if tail else None,
        "val_loss": None if val is None else val[0],
        "val_bpb": None if val is None else val[1],
        "parent": None if branched is None else branched.name,
        "stable_steps": None if branched is None else branched.step,
        "status": status,
        "wall_s": wall_s,
        "compile_s": compile_s,
        "compile_shared": compile_shared,
        "tokens_per_s": tokens_per_s,
        "epochs": batches.epochs(tokens),
        "n_layer": cfg.model.n_layer,
        "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head,
        "seq_len": cfg.model.seq_len,
        "batch_size": cfg.train.batch_size,
        "vocab_size": cfg.model.vocab_size,
        "tokenizer": cfg.data.tokenizer,
        "mesh": mesh_shape,
        "n_devices": jax.device_count(),
        "n_processes": jax.process_count(),
        "param_bytes_per_device": max(param_bytes.values()),
        "state_bytes_per_device": max(state_bytes.values()),
    }
