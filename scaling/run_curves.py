"""Training curves and annealed endpoints, read from a sweep's run directories
(``sweep_dir/runs/<run_id>/``, the layout of :mod:`scaling.run_dir`) into the arrays the fits
of :mod:`scaling.laws` take.

Bad input is a UsageError naming the problem, raised before any fitting.

Annealed endpoints (:func:`load_endpoints`, the input of approach 1 on endpoints) are points
where the learning rate has decayed, so that the loss there is what a run of that length
reaches, not a mid-run value.  From ``sweep_dir/runs/<run_id>/``:

- every ``metrics.jsonl`` line marked ``"endpoint": true`` is one endpoint (its
  ``val_loss`` at its ``flops``): the form for a run that logs several cooldown endpoints;
- otherwise the run's final evaluated point: ``summary.json``'s ``val_loss`` at its
  ``flops_6nd`` (a cosine run ends annealed), unless the summary says ``"annealed":
  false`` (for example the constant-rate stable phase of a warmup-stable-decay run, whose
  cooldowns are runs of their own).

A cooldown branch written as a run directory of its own is therefore one endpoint, like
any run.  Runs whose status is not ``completed`` are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from scaling.errors import UsageError, read_input_text
from scaling.run_dir import METRICS, SUMMARY, read_metrics, read_summary

__all__ = ["read_curve", "load_curves", "load_endpoints"]


def _json_number(v, where: str) -> float:
    """A JSON value that must be a number (bools and strings are refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UsageError(f"{where} is not a number: {str(v)[:40]!r}")
    try:
        return float(v)
    except OverflowError:
        raise UsageError(f"{where} is out of the floating-point range") from None


def read_curve(
    metrics: Path, *, loss_key: str = "loss", flops_key: str = "flops", strict: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(flops, loss) of the lines of a run's ``metrics.jsonl`` that have both keys (eval-only
    lines have no training loss).  ``strict``: a line that is not JSON or a value that is not
    a number is a UsageError naming the line; otherwise such lines are skipped (a torn last
    line of a killed run)."""
    metrics = Path(metrics)
    text = read_input_text(metrics, "metrics file") if strict else metrics.read_text()
    fl, lo = [], []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if strict:
                raise UsageError(f"{metrics} line {i + 1} is not valid JSON") from None
            continue
        if not isinstance(rec, dict) or rec.get(loss_key) is None or rec.get(flops_key) is None:
            continue
        try:
            f = _json_number(rec[flops_key], f"{metrics} line {i + 1}: {flops_key}")
            v = _json_number(rec[loss_key], f"{metrics} line {i + 1}: {loss_key}")
        except UsageError:
            if strict:
                raise
            continue
        fl.append(f)
        lo.append(v)
    return np.array(fl), np.array(lo)


def _runs_dir(sweep_dir) -> Path:
    root = Path(sweep_dir)
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    if not runs_dir.is_dir():
        raise UsageError(f"--curves directory not found: {sweep_dir}")
    return runs_dir


def load_curves(sweep_dir, *, n_key: str = "n_params", loss_key: str = "loss", flops_key: str = "flops"):
    """Training curves [(N, flops, loss)] from ``sweep_dir/runs/<run_id>/{summary.json,metrics.jsonl}``.

    Lines without ``loss_key`` (e.g. eval-only lines) are skipped; runs without a
    metrics file or summary are skipped; no usable run is a UsageError.
    """
    runs_dir = _runs_dir(sweep_dir)
    curves = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary, metrics = run / SUMMARY, run / METRICS
        if not (summary.is_file() and metrics.is_file()):
            continue
        meta = read_summary(run)
        if meta.get("status", "completed") != "completed":
            continue
        if n_key not in meta:
            raise UsageError(f"{summary} has no {n_key!r}")
        fl, lo = read_curve(metrics, loss_key=loss_key, flops_key=flops_key)
        if len(fl) >= 2:
            curves.append((_json_number(meta[n_key], f"{summary}: {n_key}"), fl, lo))
    if len(curves) < 2:
        raise UsageError(
            f"approach 1 needs training curves of at least 2 runs under {runs_dir} "
            f"(runs/<id>/metrics.jsonl with {flops_key!r} and {loss_key!r}, summary.json with {n_key!r}); "
            f"found {len(curves)}"
        )
    return curves


def _positive(rec: dict, key: str, where: str) -> float:
    v = rec.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise UsageError(f"{where}: {key!r} must be a positive number, got {v!r}")
    return float(v)


def load_endpoints(
    sweep_dir,
    *,
    n_key: str = "n_params",
    loss_key: str = "val_loss",
    flops_key: str = "flops",
    summary_flops_key: str = "flops_6nd",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, loss) arrays of the annealed endpoints under ``sweep_dir`` (module docstring)."""
    runs_dir = _runs_dir(sweep_dir)
    N, C, L = [], [], []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary_path, metrics = run / SUMMARY, run / METRICS
        summary = read_summary(run)
        if summary is None or summary.get("status", "completed") != "completed":
            continue
        n = _positive(summary, n_key, str(summary_path))
        marked = []
        for i, rec in enumerate(read_metrics(run)):
            if rec.get("endpoint") is True:
                where = f"{metrics} entry {i + 1} (an endpoint)"
                marked.append((_positive(rec, flops_key, where), _positive(rec, loss_key, where)))
        if marked:
            points = marked
        elif summary.get("annealed", True) is False:
            continue
        else:
            where = f"{summary_path} (the run's final evaluated point)"
            points = [(_positive(summary, summary_flops_key, where), _positive(summary, loss_key, where))]
        for c, loss in points:
            N.append(n)
            C.append(c)
            L.append(loss)
    if not N:
        raise UsageError(
            f"no annealed endpoints under {runs_dir} (runs/<id>/summary.json with {n_key!r}, "
            f'{summary_flops_key!r} and {loss_key!r}, or metrics.jsonl lines marked "endpoint": true)'
        )
    return np.array(N), np.array(C), np.array(L)
