"""Experiment trackers: where a run's metrics go besides ``metrics.jsonl``.

Every tracker has the same small interface (:class:`Tracker`): the run's config once at the
start, the ``metrics.jsonl`` lines as they are flushed (the same dicts, keyed by step), the
final summary, and ``close``. The ``log`` config section chooses them:

- ``metrics.jsonl`` always (:class:`scaling.train.metrics.JsonlTracker`);
- TensorBoard event files (``log.tensorboard``), written with TensorBoard's own event writer
  (no TensorFlow or torch needed): scalars under the metrics.jsonl names (and the summary's
  numbers as ``summary/<key>``), the config and the summary as text, the config's values as
  hyperparameters;
- Weights & Biases (``log.wandb``), in ``log.mode`` online, offline or disabled.

The optional packages are imported only when a tracker is asked for; a missing one is a
:class:`~scaling.errors.UsageError` naming the extra to install (the one reason for an
import inside a function here). Only process 0 of a multi-process run tracks.

A resumed run re-logs the steps after its checkpoint (as metrics.jsonl does after its
truncation). TensorBoard forgets the earlier copies: each writer starts with a SessionLog
START at the first step it will log, which makes TensorBoard's reader drop the events of that
step on from earlier event files. W&B resumes the same run (its id is kept in the checkpoint
metadata) and, taking steps in increasing order only, ignores a re-logged step it already
holds: it keeps the values logged before the interruption (the same up to floating-point
noise: training is deterministic in the step). A run restarted without a checkpoint starts a new W&B run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from scaling.config import Config, LogConfig
from scaling.errors import UsageError

EXTRA_HINT = "pip install 'scaling[tracking]'"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID = "wandb_id"  # the checkpoint-metadata key holding the run's W&B id


class Tracker(Protocol):
    """Where a run's metrics go. ``log`` may buffer; ``flush`` makes what was logged durable."""

    def log_config(self, config: dict) -> None: ...

    def log(self, step: int, metrics: dict) -> None: ...

    def flush(self) -> None: ...

    def log_summary(self, summary: dict) -> None: ...

    def close(self, failed: bool = False) -> None: ...


@dataclasses.dataclass(frozen=True)
class SweepGroup:
    """The sweep a run belongs to: its directory and name (trackers group its runs by them)."""

    out: Path
    name: str


def _import(module: str, option: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{option} needs the {module.split('.')[0]} package: {EXTRA_HINT}") from None


def check_available(log: LogConfig) -> None:
    """Before any compute: UsageError when a tracker the config asks for is not installed."""
    if log.tensorboard:
        _import("tensorboard.summary.writer.event_file_writer", "log.tensorboard")
    if log.wandb:
        _import("wandb", "log.wandb")


def _numbers(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, bool | int | float | str):
            out[f"{prefix}{k}"] = v
    return out


class TensorBoardTracker:
    """TensorBoard event files in ``logdir``; ``start`` is the step the run resumes from (0 when
    fresh): events of later steps in earlier files are superseded."""

    def __init__(self, logdir: Path, start: int):
        efw = _import("tensorboard.summary.writer.event_file_writer", "log.tensorboard")
        self._pb = _import("tensorboard.compat.proto.event_pb2", "log.tensorboard")
        self._summary_pb2 = _import("tensorboard.compat.proto.summary_pb2", "log.tensorboard")
        self._text = _import("tensorboard.plugins.text.summary_v2", "log.tensorboard").text_pb
        self._hparams = _import("tensorboard.plugins.hparams.summary_v2", "log.tensorboard").hparams_pb
        self.logdir, self.step = Path(logdir), start
        self._writer, self._closed = efw.EventFileWriter(str(self.logdir)), False
        restart = self._pb.SessionLog(status=self._pb.SessionLog.START)
        self._writer.add_event(self._pb.Event(wall_time=time.time(), step=start + 1, session_log=restart))

    def _emit(self, step: int, summary) -> None:
        self._writer.add_event(self._pb.Event(wall_time=time.time(), step=step, summary=summary))

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars as ``simple_value`` (the classic form every TensorBoard reader takes)."""
        s = self._summary_pb2.Summary
        self._emit(step, s(value=[s.Value(tag=k, simple_value=v) for k, v in values.items()]))

    def log_config(self, config: dict) -> None:
        text = "```\n" + json.dumps(config, indent=1) + "\n```"
        self._emit(self.step, self._text("config", text))
        self._emit(self.step, self._hparams(_flat(config)))

    def log(self, step: int, metrics: dict) -> None:
        self.step = step
        self._scalars(step, _numbers(metrics))

    def flush(self) -> None:
        self._writer.flush()

    def log_summary(self, summary: dict) -> None:
        self._emit(self.step, self._text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```"))
        self._scalars(self.step, {f"summary/{k}": v for k, v in _numbers(summary).items()})

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()


class WandbTracker:
    """One W&B run (``run_id``: resumed when W&B knows it), its files under ``directory``/wandb."""

    def __init__(self, log: LogConfig, directory: Path, name: str, group: str, run_id: str):
        wandb = _import("wandb", "log.wandb")
        self.run_id = run_id
        self._pending: dict[str, Any] = {}
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._run = wandb.init(
                project=log.project,
                entity=log.entity or None,
                group=group or None,
                name=name,
                tags=[t.strip() for t in log.tags.split(",") if t.strip()] or None,
                mode=log.mode or None,
                dir=str(directory),
                id=run_id,
                resume="allow",
            )
        except Exception as e:  # wandb's own errors (no API key, no network) have no common base
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"log.wandb: W&B did not start ({msg}); log in, or use --log.mode offline") from None

    def log_config(self, config: dict) -> None:
        self._run.config.update(config, allow_val_change=True)

    def log(self, step: int, metrics: dict) -> None:
        self._run.log(_numbers(metrics), step=step)

    def flush(self) -> None:
        pass  # W&B's own process writes and uploads

    def log_summary(self, summary: dict) -> None:
        self._run.summary.update(summary)

    def close(self, failed: bool = False) -> None:
        self._run.finish(exit_code=1 if failed else 0)


def new_wandb_id() -> str:
    return uuid.uuid4().hex[:12]


def open_trackers(
    cfg: Config, out: Path, start: int, *, sweep: SweepGroup | None = None, resume_meta: dict | None = None
) -> list[Tracker]:
    """The trackers ``cfg.log`` asks for, for the run in ``out`` starting at step ``start``, with
    the run's config logged (``resume_meta``: the metadata of the run's own checkpoint it
    resumes from, {} when it starts afresh; None on a process that does not track)."""
    if resume_meta is None:
        return []
    log, out = cfg.log, Path(out)
    name = log.name or out.name
    root = Path(log.dir) if log.dir else (sweep.out if sweep is not None else None)
    group = log.group or (sweep.name if sweep is not None else "")
    trackers: list[Tracker] = []
    try:
        if log.tensorboard:
            logdir = root / TENSORBOARD_DIR / name if root is not None else out / TENSORBOARD_DIR
            trackers.append(TensorBoardTracker(logdir, start))
        if log.wandb:
            run_id = resume_meta.get(WANDB_ID) or new_wandb_id()
            trackers.append(WandbTracker(log, root if root is not None else out, name, group, run_id))
        for t in trackers:
            t.log_config(cfg.to_dict())
    except BaseException:
        close_all(trackers, failed=True)
        raise
    return trackers


@contextlib.contextmanager
def tracking(cfg: Config, out: Path, start: int, *, sweep: SweepGroup | None, resume_meta: dict | None):
    """:func:`open_trackers` for a block that ends with :func:`finish`; an exception out of the
    block closes them as failed."""
    trackers = open_trackers(cfg, out, start, sweep=sweep, resume_meta=resume_meta)
    try:
        yield trackers
    except BaseException:
        close_all(trackers, failed=True)
        raise


def finish(trackers: list[Tracker], summary: dict) -> None:
    """Log the run's summary to every tracker and close them (failed unless completed)."""
    for t in trackers:
        t.log_summary(summary)
    close_all(trackers, failed=summary.get("status") != "completed")


def tracker_meta(trackers: list[Tracker]) -> dict:
    """What a checkpoint keeps of the trackers so that a resumed run continues them."""
    ids = [t.run_id for t in trackers if isinstance(t, WandbTracker)]
    return {WANDB_ID: ids[0]} if ids else {}


def close_all(trackers: list[Tracker], failed: bool = False) -> None:
    """Close every tracker (each one, even when an earlier one fails to close)."""
    errors = []
    for t in trackers:
        try:
            t.close(failed=failed)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]
