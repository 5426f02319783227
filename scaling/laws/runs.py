"""The inputs of a fit, read and validated: a table of runs (any CSV with N, D or C, and loss
columns), training curves and annealed endpoints from a sweep's run directories.

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

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import UsageError, read_input_bytes, read_input_text

__all__ = ["Runs", "DEFAULT_ALT_N_COL", "load_runs", "alt_counts", "read_curve", "load_curves", "load_endpoints"]

DEFAULT_ALT_N_COL = "n_params_nonembed"
"""The second parameter count of a sweep's results.csv."""


@dataclass(frozen=True)
class Runs:
    """Validated runs: N, D, loss and compute C per run (float64 arrays)."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray
    budget: np.ndarray | None = None  # IsoFLOP budget label per run, when given
    group: np.ndarray | None = None  # group value per run (str), when grouped

    def __len__(self) -> int:
        return int(self.N.size)

    def subset(self, mask) -> Runs:
        return Runs(
            N=self.N[mask],
            D=self.D[mask],
            L=self.L[mask],
            C=self.C[mask],
            budget=None if self.budget is None else self.budget[mask],
            group=None if self.group is None else self.group[mask],
        )

    def groups(self) -> dict[str, Runs]:
        """The runs of each group value, values sorted."""
        return {v: self.subset(self.group == v) for v in sorted(set(self.group.tolist()))}


def _numeric(df, col, path):
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        first = df[col].iloc[int(np.argmax(bad))]
        raise UsageError(
            f"column {col!r} of {path} has {int(bad.sum())} missing or non-numeric value(s) (first: {first!r})"
        )
    return vals


def load_runs(
    path,
    *,
    n_col: str = "n_params",
    d_col: str | None = "tokens",
    c_col: str | None = None,
    loss_col: str = "val_loss",
    budget_col: str | None = "budget",
    group_col: str | None = None,
    status_col: str = "status",
    drop_top_loss: int = 0,
) -> Runs:
    """Read and validate a CSV of runs; UsageError naming the problem on bad input.

    D comes from ``d_col`` when that column exists, else C / (6 N) from ``c_col``;
    C comes from ``c_col`` when given, else 6 N D.  ``budget_col`` is used when the CSV
    has it.  Rows whose ``status_col`` exists and is not "completed" are dropped, then
    the ``drop_top_loss`` highest-loss rows.
    """
    path = Path(path)
    data = read_input_bytes(path, "results file")
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    cols = list(df.columns)
    has_d = d_col is not None and d_col in df.columns
    if c_col is not None and c_col not in df.columns:
        raise UsageError(f"column {c_col!r} (--c-col) not in {path}; columns: {cols}")
    needed = [("--n-col", n_col), ("--loss-col", loss_col)]
    if not has_d and c_col is None:
        needed.append(("--d-col", d_col))
    missing = [f"{c!r} ({flag})" for flag, c in needed if c is None or c not in df.columns]
    if missing:
        hint = "; pass --d-col or --c-col" if any("--d-col" in m for m in missing) else ""
        raise UsageError(f"missing column(s) {', '.join(missing)} in {path}; columns: {cols}{hint}")
    if group_col is not None and group_col not in df.columns:
        raise UsageError(f"column {group_col!r} (--group-col) not in {path}; columns: {cols}")
    if status_col in df.columns:
        df = df[df[status_col].astype(str).str.strip() == "completed"]
    if drop_top_loss < 0:
        raise UsageError(f"--drop-top-loss must be >= 0, got {drop_top_loss}")
    if drop_top_loss:
        if drop_top_loss >= len(df):
            raise UsageError(f"--drop-top-loss {drop_top_loss} would drop all {len(df)} runs")
        loss = pd.to_numeric(df[loss_col], errors="coerce")
        df = df.loc[loss.sort_values(ascending=False, kind="stable").index[drop_top_loss:]]
        df = df.sort_index()
    if len(df) == 0:
        raise UsageError(f"no usable runs in {path} (after dropping runs whose status is not completed)")
    N = _numeric(df, n_col, path)
    L = _numeric(df, loss_col, path)
    C = _numeric(df, c_col, path) if c_col is not None else None
    for name, col, v in (("N", n_col, N), ("loss", loss_col, L), ("C", c_col, C)):
        if v is not None and np.any(v <= 0):
            bad = v[v <= 0]
            raise UsageError(
                f"{bad.size} non-positive {name} value(s) in column {col!r} of {path} (first: {bad[0]:g}); "
                "losses, sizes and FLOPs must be > 0"
            )
    if has_d:
        D = _numeric(df, d_col, path)
        if np.any(D <= 0):
            raise UsageError(f"{int(np.sum(D <= 0))} non-positive D value(s) in column {d_col!r} of {path}")
    else:
        D = C / (6.0 * N)
    if C is None:
        C = 6.0 * N * D
    budget = None
    if budget_col is not None and budget_col in df.columns:  # blank for runs outside IsoFLOP budgets
        budget = pd.to_numeric(df[budget_col], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(budget).any():
            budget = None
    group = df[group_col].astype(str).to_numpy() if group_col is not None else None
    return Runs(N=N, D=D, L=L, C=C, budget=budget, group=group)


def alt_counts(path, runs: Runs, *, col: str | None, n_col: str, **load_kw) -> np.ndarray | None:
    """A second parameter count per run (rows as ``runs``) from column ``col`` of the same CSV
    (default :data:`DEFAULT_ALT_N_COL` when the CSV has it and it is not ``n_col``), or None."""
    if col is None:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if DEFAULT_ALT_N_COL not in header or n_col == DEFAULT_ALT_N_COL:
            return None
        col = DEFAULT_ALT_N_COL
    alt = load_runs(path, n_col=col, **load_kw)
    if len(alt) != len(runs) or not np.array_equal(alt.L, runs.L):
        raise UsageError(f"--alt-n-col {col}: rows differ from the --n-col rows")
    return alt.N


# ------------------------------------------------------------------------ run directories


def _json_number(v, where: str) -> float:
    """A JSON value that must be a number (bools and strings are refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UsageError(f"{where} is not a number: {str(v)[:40]!r}")
    try:
        return float(v)
    except OverflowError:
        raise UsageError(f"{where} is out of the floating-point range") from None


def read_curve(metrics: Path, *, loss_key: str = "loss", flops_key: str = "flops",
               strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
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


def _read_summary(path: Path) -> dict:
    try:
        meta = json.loads(read_input_text(path, "run summary"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path} is not a JSON object")
    return meta


def load_curves(sweep_dir, *, n_key: str = "n_params", loss_key: str = "loss", flops_key: str = "flops"):
    """Training curves [(N, flops, loss)] from ``sweep_dir/runs/<run_id>/{summary.json,metrics.jsonl}``.

    Lines without ``loss_key`` (e.g. eval-only lines) are skipped; runs without a
    metrics file or summary are skipped; no usable run is a UsageError.
    """
    runs_dir = _runs_dir(sweep_dir)
    curves = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary, metrics = run / "summary.json", run / "metrics.jsonl"
        if not (summary.is_file() and metrics.is_file()):
            continue
        meta = _read_summary(summary)
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


def load_endpoints(sweep_dir, *, n_key: str = "n_params", loss_key: str = "val_loss", flops_key: str = "flops",
                   summary_flops_key: str = "flops_6nd") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, loss) arrays of the annealed endpoints under ``sweep_dir`` (module docstring)."""
    runs_dir = _runs_dir(sweep_dir)
    N, C, L = [], [], []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary_path, metrics = run / "summary.json", run / "metrics.jsonl"
        if not summary_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{summary_path} is not valid JSON: {e}") from None
        if summary.get("status", "completed") != "completed":
            continue
        n = _positive(summary, n_key, str(summary_path))
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
        raise UsageError(f"no annealed endpoints under {runs_dir} (runs/<id>/summary.json with {n_key!r}, "
                         f"{summary_flops_key!r} and {loss_key!r}, or metrics.jsonl lines marked \"endpoint\": true)")
    return np.array(N), np.array(C), np.array(L)
