"""A sweep directory's files: the run log, results.csv (of the plan's runs only), and the check of an
existing directory against the plan."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from scaling import config_parse
from scaling.config import Config
from scaling.errors import UsageError
from scaling.io import atomic_write_text, file_lock, load_yaml
from scaling.run_dir import SUMMARY, first_difference, read_config, read_summary
from scaling.sweep.plan import Plan
from scaling.sweep.spec import RESULT_COLUMNS

VOLATILE_COLUMNS = ("wall_s", "compile_s", "tokens_per_s")
"""Columns that depend on the machine and timing (everything else is reproducible)."""


# ----------------------------------------------------------------------------- files


def read_json(path: Path) -> dict | None:
    """A file the sweep writes itself (plan.json, fit.json), or None when it is missing or not
    JSON (run directories' own files are read through :mod:`scaling.run_dir`)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_event(out: Path, **event) -> None:
    """Append one line to DIR/sweep_log.jsonl (a single O_APPEND write)."""
    event = {"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), **event}
    line = (json.dumps(event) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "sweep_log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
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


def _config(run_dir: Path) -> Config | None:
    """The config of the run trained in ``run_dir`` (its config.yaml), or None."""
    try:
        return read_config(run_dir)
    except UsageError:
        return None


def _summaries(out: Path, plan: Plan | None) -> tuple[list[tuple[Path, dict, Config | None]], list[str]]:
    """(run directory, summary, config) of every finished run of ``plan`` (all of DIR/runs without a
    plan), and the run ids of the others, which are left out: a run of another plan (a
    run id it does not have, or trained with another config: model, data, optimizer or
    budget) that shared the directory. With ``resume.allow_config_change`` a planned run
    id counts whatever its config."""
    planned = None if plan is None else {r.run_id: r.cfg.identity_hash() for r in plan.runs}
    any_config = plan is not None and plan.base.resume.allow_config_change
    kept, ignored = [], []
    for summary_path in sorted((Path(out) / "runs").glob(f"*/{SUMMARY}")):
        run_dir = summary_path.parent
        try:
            summary = read_summary(run_dir)
        except UsageError:
            continue  # unreadable: the run is not finished (execute trains it again)
        if summary is None:
            continue
        cfg = _config(run_dir)
        if planned is not None and (
            run_dir.name not in planned
            or not (any_config or (cfg is not None and cfg.identity_hash() == planned[run_dir.name]))
        ):
            ignored.append(run_dir.name)
            continue
        kept.append((run_dir, summary, cfg))
    return kept, ignored


def ignored_runs(out: Path, plan: Plan) -> list[str]:
    """Run ids under DIR/runs with a summary that are not runs of ``plan`` (see ``_summaries``)."""
    return _summaries(out, plan)[1]


def collect_rows(out: Path, plan: Plan | None = None) -> list[dict]:
    """One row per finished run of ``plan`` (every run directory with a summary.json when no
    plan is given), joined with its plan.json, in plan order."""
    rows = []
    for run_dir, summary, cfg in _summaries(out, plan)[0]:
        entry = read_json(run_dir / "plan.json") or {}  # the run's plan entry
        row = {k: summary.get(k) for k in RESULT_COLUMNS if k in summary}
        row["run_id"] = run_dir.name
        row["budget"] = entry.get("budget")
        row["seed"] = entry.get("seed", summary.get("seed"))
        row["target_n"] = entry.get("target_n")
        row["parent"], row["stable_steps"] = summary.get("parent"), summary.get("stable_steps")
        row["lr"], row["warmup_steps"] = (None, None) if cfg is None else (cfg.optim.lr, cfg.optim.warmup_steps)
        if entry.get("arm") is not None:
            row["arm"] = entry["arm"]
        for k, v in (entry.get("tags") or {}).items():
            row[k] = v
        row["_index"] = entry.get("index", 1 << 30)
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


def rebuild_results(out: Path, plan: Plan | None = None) -> list[dict]:
    """Rewrite DIR/results.csv (an atomic write under DIR/locks/results.lock) from the
    runs/*/summary.json of ``plan``'s runs; returns the rows. Readers never see a partial file;
    two writers never interleave, and the last one reads every summary written before it took
    the lock."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        return rebuild_unlocked(out, plan)


def rebuild_unlocked(out: Path, plan: Plan | None = None) -> list[dict]:
    rows = collect_rows(out, plan)
    atomic_write_text(out / "results.csv", results_csv_text(rows))
    return rows


# ----------------------------------------------------------------------------- an existing --out


def check_outputs(plan: Plan, out: Path) -> None:
    """Refuse (UsageError, nothing written) an --out that is a file or holds any of the plan's
    runs trained with a different config (model, data, optimizer or budget)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if plan.base.resume.allow_config_change:
        return
    for r in plan.runs:
        stored = out / "runs" / r.run_id / "config.yaml"
        if not stored.is_file():
            continue
        try:
            old = config_parse.from_dict(load_yaml(stored))
        except UsageError as e:
            raise UsageError(f"{stored} is not a readable run config ({e}); use a new --out") from None
        if old.identity_hash() != r.cfg.identity_hash():
            diff = first_difference(old, r.cfg)
            raise UsageError(
                f"{out / 'runs' / r.run_id} was trained with a different config ({diff}); "
                f"use a new --out, or --resume.allow_config_change true"
            )
