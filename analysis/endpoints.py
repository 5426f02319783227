"""Annealed endpoints of a sweep's runs, the input of approach 1 on endpoints
(:func:`scaling.law_envelope.fit_approach1_endpoints`).

An endpoint is a point where the learning rate has decayed: the loss there is what a run
of that length reaches, not a mid-run value.  From ``sweep_dir/runs/<run_id>/``:

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

from scaling.errors import UsageError

__all__ = ["load_endpoints"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None


def _number(rec: dict, key: str, where: str) -> float:
    v = rec.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise UsageError(f"{where}: {key!r} must be a positive number, got {v!r}")
    return float(v)


def load_endpoints(sweep_dir, *, n_key: str = "n_params", loss_key: str = "val_loss", flops_key: str = "flops",
                   summary_flops_key: str = "flops_6nd") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, loss) arrays of the annealed endpoints under ``sweep_dir`` (module docstring)."""
    root = Path(sweep_dir)
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    if not runs_dir.is_dir():
        raise UsageError(f"--curves directory not found: {sweep_dir}")
    N, C, L = [], [], []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary_path, metrics = run / "summary.json", run / "metrics.jsonl"
        if not summary_path.is_file():
            continue
        summary = _read_json(summary_path)
        if summary.get("status", "completed") != "completed":
            continue
        n = _number(summary, n_key, str(summary_path))
        marked = []
        if metrics.is_file():
            for i, line in enumerate(metrics.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{metrics} line {i + 1} is not valid JSON") from None
                if rec.get("endpoint") is True:
                    where = f"{metrics} line {i + 1} (an endpoint)"
                    marked.append((_number(rec, flops_key, where), _number(rec, loss_key, where)))
        if marked:
            points = marked
        elif summary.get("annealed", True) is False:
            continue
        else:
            where = f"{summary_path} (the run's final evaluated point)"
            points = [(_number(summary, summary_flops_key, where), _number(summary, loss_key, where))]
        for c, loss in points:
            N.append(n)
            C.append(c)
            L.append(loss)
    if not N:
        raise UsageError(f"no annealed endpoints under {runs_dir} (runs/<id>/summary.json with {n_key!r}, "
                         f"{summary_flops_key!r} and {loss_key!r}, or metrics.jsonl lines marked \"endpoint\": true)")
    return np.array(N), np.array(C), np.array(L)
