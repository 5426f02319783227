"""Orbax checkpoints of the train state: save, keep the last k (and the best), resume.

A checkpoint holds the train state (step, parameters, optimizer state) and a small JSON
``meta`` item: the config's identity hash, the validation loss and the metrics.jsonl
length at the time. The RNG of a step is ``fold_in(key(seed), step)`` and the data
position is the step, so the state is all a resumed run needs to continue bit for bit.
Restores go through ``StandardRestore`` with the *current* run's shardings, so a run
saved on one mesh resumes on another (orbax reshards).

Saves are asynchronous by default (``checkpoint.async_save``): ``save`` returns once the
arrays are copied to host memory and orbax writes them in a background thread into a
temporary directory that it renames into place when complete, so a kill mid-save leaves the
previous checkpoints intact (and the temporary directory is cleaned up on the next start).
Old checkpoints are pruned by orbax's preservation policy (the last ``keep``, plus the best
by validation loss with ``keep_best``) only after the newer checkpoint has been committed.
``wait``/``close`` block until the last save is on disk; a run calls them before it reports
completion.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from scaling.config import CheckpointConfig
from scaling.errors import UsageError


class Checkpointer:
    def __init__(self, directory: Path, cfg: CheckpointConfig):
        self.cfg = cfg
        self.directory = Path(directory).absolute()
        policies = [ocp.checkpoint_managers.LatestN(n=cfg.keep)]
        if cfg.keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=cfg.async_save, cleanup_tmp_directories=True,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=(lambda m: m["val_loss"]) if cfg.keep_best else None, best_mode="min")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._last_save_time = time.monotonic()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict | None:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:
            return None

    def due(self, step: int, final: bool, steps_left: int | None = None) -> bool:
        """Whether to save after ``step``: always at the end; every ``every_steps`` steps (and
        ``every_seconds``) except within the last quarter of an interval before the end, when
        the final save is as good and only moments away."""
        if final:
            return True
        if steps_left is not None and steps_left < self.cfg.every_steps // 4:
            return False
        if self.cfg.every_steps and step % self.cfg.every_steps == 0:
            return True
        return bool(self.cfg.every_seconds) and time.monotonic() - self._last_save_time >= self.cfg.every_seconds

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start saving ``state`` at ``step`` (returns once it is copied to host memory when
        saving asynchronously; an earlier save still in flight is finished first)."""
        if step in self.manager.all_steps():
            return
        metrics = None
        if self.cfg.keep_best:  # an unevaluated checkpoint never counts as the best
            metrics = {"val_loss": math.inf if meta.get("val_loss") is None else float(meta["val_loss"])}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)
        self._last_save_time = time.monotonic()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest checkpoint that restores, as (state, meta, step); a warning line for
        each one that does not. None if there is no checkpoint at all."""
        steps = self.steps()
        for step in reversed(steps):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return out["state"], out["meta"], step
            except Exception as e:  # truncated or partial files
                msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                print(f"warning: checkpoint {step} under {self.directory} failed to restore ({msg}); "
                      f"trying an earlier one", file=sys.stderr)
        if steps:
            raise CorruptCheckpoints(f"no checkpoint under {self.directory} could be restored "
                                     f"(pass --resume.restart_if_corrupt true to start from scratch)")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CorruptCheckpoints(UsageError):
    """Every checkpoint of a run failed to restore."""


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
