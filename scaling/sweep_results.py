"""A sweep directory's files: atomic writes, advisory locks, the run log and results.csv."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator



RESULT_COLUMNS = (
    "run_id", "n_layer", "d_model", "n_head", "seq_len", "batch_size", "n_params", "n_params_nonembed", "tokens",
    "steps", "flops_6nd", "flops_kaplan", "flops_chinchilla", "flops_xla", "final_train_loss", "val_loss", "val_bpb",
    "status", "wall_s", "compile_s", "tokens_per_s", "epochs", "budget", "seed", "target_n",
)
"""results.csv columns, then ``arm`` (when the sweep has arms) and any tags."""
VOLATILE_COLUMNS = ("wall_s", "compile_s", "tokens_per_s")
"""Columns that depend on the machine and timing (everything else is reproducible)."""


# ----------------------------------------------------------------------------- files and locks


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An advisory exclusive lock (flock) on ``path``; yields whether it was acquired. The
    kernel releases it when the process dies, so a killed worker never leaves it held. Where
    the filesystem cannot lock (no flock), it yields True without locking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:  # e.g. ENOLCK on a filesystem without locks
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def log_event(out: Path, **event) -> None:
    """Append one line to DIR/sweep_log.jsonl (a single O_APPEND write)."""
    event = {"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), **event}
    line = (json.dumps(event) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "sweep_log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_log(out: Path) -> list[dict]:
    p = Path(out) / "sweep_log.jsonl"
    if not p.is_file():
        return []
    events = []
    for line in p.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a torn line from a kill
    return events


# ----------------------------------------------------------------------------- results table


def collect_rows(out: Path) -> list[dict]:
    """One row per run directory with a summary.json (joined with its plan.json), in plan order."""
    rows = []
    for summary_path in sorted((Path(out) / "runs").glob("*/summary.json")):
        summary = _read_json(summary_path)
        if summary is None:
            continue
        run_dir = summary_path.parent
        plan = _read_json(run_dir / "plan.json") or {}
        row = {k: summary.get(k) for k in RESULT_COLUMNS if k in summary}
        row["run_id"] = run_dir.name
        row["budget"] = plan.get("budget")
        row["seed"] = plan.get("seed", summary.get("seed"))
        row["target_n"] = plan.get("target_n")
        if plan.get("arm") is not None:
            row["arm"] = plan["arm"]
        for k, v in (plan.get("tags") or {}).items():
            row[k] = v
        row["_index"] = plan.get("index", 1 << 30)
        rows.append(row)
    rows.sort(key=lambda r: (r["_index"], r["run_id"]))
    return rows


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def results_csv_text(rows: list[dict]) -> str:
    extra = []
    if any("arm" in r for r in rows):
        extra.append("arm")
    for r in rows:
        for k in r:
            if k not in RESULT_COLUMNS and k not in extra and not k.startswith("_"):
                extra.append(k)
    cols = list(RESULT_COLUMNS) + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return buf.getvalue()


def rebuild_results(out: Path) -> list[dict]:
    """Rewrite DIR/results.csv (temp file + os.replace, under DIR/locks/results.lock) from every
    runs/*/summary.json; returns the rows. Readers never see a partial file; two writers
    never interleave, and the last one reads every summary written before it took the lock."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        return _rebuild_unlocked(out)


def _rebuild_unlocked(out: Path) -> list[dict]:
    rows = collect_rows(out)
    atomic_write(out / "results.csv", results_csv_text(rows))
    return rows
