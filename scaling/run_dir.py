"""The run directory: what a training run writes, how readers read it, how a run owns it.

    DIR/config.yaml     the run's resolved config, written once its state is known
    DIR/metrics.jsonl   one JSON object per logged step, appended (a kill may tear the last line)
    DIR/summary.json    the run's summary, written atomically when it ends
    DIR/checkpoints/    orbax steps with checksum manifests (scaling.checkpoint)
    DIR/.lock           held by the process that trains in DIR (scaling.io.hold_directory)

Readers (generate, evaluate, sweeps, analysis) use :func:`read_config`, :func:`read_metrics`,
:func:`read_summary`, :func:`run_status` and :func:`checkpoints_path`, which report a missing or malformed file
as a :class:`~scaling.errors.UsageError` naming it.

A training run owns its directory through a :class:`RunDirectory`: process 0 holds the lock
for the whole run, a directory holding another config's run (by its ``config.yaml``, or by
checkpoint metadata: :meth:`RunDirectory.check_identity`) is refused unless the run starts
over or ``resume.allow_config_change``, and a write that fails (read-only directory, full
disk), in Python or inside orbax's writer threads, becomes one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

from scaling import config as config_lib
from scaling import config_parse
from scaling import io as run_io
from scaling.config import Config
from scaling.errors import UsageError
from scaling.io import load_yaml

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
OUTPUTS = (SUMMARY, CHECKPOINTS, METRICS, CONFIG)
"""What a run writes into its directory (and starting over removes, in this order)."""


# ----------------------------------------------------------------------------- reading


def checkpoints_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def read_config(run_dir: str | Path) -> Config:
    """The config of the run trained in ``run_dir``; UsageError when there is none or it is
    not a valid config."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UsageError(f"not a training run directory (no {CONFIG}): {run_dir}")
    return config_parse.from_dict(load_yaml(run_dir / CONFIG))


def first_difference(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> str:
    """The first identity field (``section.field``, not one of RESUME_SAFE_FIELDS or ``ignore``)
    where two runs' configs differ, as ``"sec.field: A there, B now"``."""
    da, db = a.to_dict(), b.to_dict()
    for sec in config_lib.RESUME_IDENTITY_SECTIONS:
        for k in da[sec]:
            if f"{sec}.{k}" in config_lib.RESUME_SAFE_FIELDS or f"{sec}.{k}" in ignore:
                continue
            if da[sec][k] != db[sec].get(k):
                return f"{sec}.{k}: {da[sec][k]!r} there, {db[sec].get(k)!r} now"
    return "identity hash differs"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of ``metrics.jsonl`` ([] when there is none); a torn last line is dropped, any
    other line that is not a JSON object is a UsageError."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = run_io.read_jsonl(path, "metrics file")
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise UsageError(f"{path}: entry {i + 1} is not a JSON object")
    return lines


def read_summary(run_dir: str | Path) -> dict | None:
    """``summary.json`` (None while the run has not ended); UsageError when it is not a JSON object."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    summary = run_io.read_json(path, "run summary")
    if not isinstance(summary, dict):
        raise UsageError(f"run summary {path} is not a JSON object")
    return summary


def run_status(run_dir: str | Path) -> str | None:
    """The ``status`` of the run's summary (``completed``, ``diverged``, ...): None while the run
    has not ended, and for a summary that cannot be read (the run is then not finished)."""
    try:
        summary = read_summary(run_dir)
    except UsageError:
        return None
    return None if summary is None else summary.get("status")


# ----------------------------------------------------------------------------- write errors

# tensorstore (orbax's array writer) reports a failed file operation as a ValueError naming an
# OS error code or the local file it could not read or write
_TENSORSTORE_FILE_ERROR = re.compile(r"\[os_error_code='?\d+'?\]|local file \"")


def is_write_error(e: BaseException | None) -> bool:
    """An OSError, or tensorstore's report of a failed file operation: what writing into an
    unwritable or full directory raises, in Python or inside orbax."""
    return isinstance(e, OSError) or (isinstance(e, ValueError) and bool(_TENSORSTORE_FILE_ERROR.search(str(e))))


class _QuietWriteErrors(logging.Filter):
    """Drops orbax's log records (with tracebacks) of a write error in its writer threads, and
    after the run met one, of any error: the run reports the failure itself in one line (the
    error reaches it at its next save or wait)."""

    def __init__(self, owner: RunDirectory):
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not (self.owner.write_failed or is_write_error(exc))


# ----------------------------------------------------------------------------- ownership


class RunDirectory:
    """``path`` as the directory of the run of ``cfg`` in this process (``is_main``: process 0,
    the one that holds the lock and writes the files other than checkpoints)."""

    def __init__(self, path: str | Path, cfg: Config, *, is_main: bool):
        self.path, self.cfg, self.is_main = Path(path), cfg, is_main
        self.write_failed = False  # a write failed (and was reported)
        self.checkpointer_broken = False  # ... inside orbax: its writer threads may wait on each other for minutes
        self._held = contextlib.ExitStack()

    def hold(self) -> None:
        """Take the directory's lock (process 0) until :meth:`release`; UsageError naming the
        holder when another process has it."""
        if self.is_main:
            with self.writing("lock"):
                self._held.enter_context(run_io.hold_directory(self.path))

    def release(self) -> None:
        self._held.close()

    @contextlib.contextmanager
    def writing(self, what: str = "write the outputs of", checkpointer: bool = False):
        """Turn an error of writing into the directory into one line (a UsageError);
        ``checkpointer``: the write is orbax's."""
        try:
            yield
        except (OSError, ValueError) as e:
            if not is_write_error(e):
                raise
            self.write_failed = True
            self.checkpointer_broken |= checkpointer
            raise UsageError(
                f"cannot {what} the run in {self.path}: {str(e).splitlines()[0]}; rerun once it is "
                f"writable to resume from the last checkpoint"
            ) from None

    @contextlib.contextmanager
    def quiet_write_errors(self):
        """While inside, orbax's log records of write errors are dropped (see _QuietWriteErrors)."""
        log, quiet = logging.getLogger("absl"), _QuietWriteErrors(self)
        log.addFilter(quiet)
        try:
            yield
        finally:
            log.removeFilter(quiet)

    def check_config(self) -> None:
        """Refuse a directory that holds another config's run (by its config.yaml), or outputs
        without a config.yaml (whose run cannot be told)."""
        stored = self.path / CONFIG
        if not stored.is_file():
            found = [n for n in (METRICS, SUMMARY) if (self.path / n).exists()]
            if found:
                raise UsageError(
                    f"{self.path} holds {' and '.join(found)} but no {CONFIG} (not a run of this "
                    f"config); use another --out, or --overwrite to start over"
                )
            return
        try:
            old = config_parse.from_dict(load_yaml(stored))
        except UsageError as e:
            raise UsageError(
                f"{stored} is not a readable run config ({e}); use another --out, or --overwrite to start over"
            ) from None
        if old.identity_hash() != self.cfg.identity_hash() and not self.cfg.resume.allow_config_change:
            raise UsageError(
                f"{self.path} holds a run of a different config (model, data, optimizer or budget "
                f"changed); use another --out, --overwrite to start over, or "
                f"--resume.allow_config_change true"
            )

    def check_identity(self, meta: dict, step: int) -> None:
        """Refuse checkpoint ``step`` when its metadata names another config."""
        if self.cfg.resume.allow_config_change or meta.get("config_hash") == self.cfg.identity_hash():
            return
        raise UsageError(
            f"{self.path} holds checkpoints of a different config (model, data, optimizer or budget "
            f"changed; checkpoint {step}); use another --out, --overwrite to start over, or "
            f"--resume.allow_config_change true"
        )

    def start_over(self) -> None:
        """Remove the run's own outputs (process 0; by name: anything else in the directory
        stays). The config goes last, so an interrupted start-over is still refused as
        another config."""
        if not self.is_main:
            return
        with self.writing("start over"):
            for name in OUTPUTS:
                p = self.path / name
                if p.is_dir() and not p.is_symlink():
                    aside = self.path / f".{name}.removing-{os.getpid()}"
                    os.replace(p, aside)  # gone at once for readers; deleted below
                    shutil.rmtree(aside)
                else:
                    p.unlink(missing_ok=True)

    def write_config(self) -> None:
        if self.is_main:
            with self.writing():
                run_io.atomic_write_text(self.path / CONFIG, self.cfg.to_yaml())

    def write_summary(self, text: str) -> None:
        if self.is_main:
            with self.writing():
                run_io.atomic_write_text(self.path / SUMMARY, text)

    def probe_checkpoints(self, directory: Path) -> None:
        """Stop on a checkpoint directory that cannot take a save, before orbax's writer threads
        meet it (they would log tracebacks, and then wait minutes for each other)."""
        with self.writing("save a checkpoint of"):
            run_io.probe_writable(directory)
