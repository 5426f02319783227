"""The inputs of a fit, read and validated: a table of runs (any CSV with N, D or C, and loss
columns). Training curves and annealed endpoints read from a sweep's run directories are
:mod:`scaling.run_curves`'s.

Bad input is a UsageError naming the problem, raised before any fitting.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import UsageError, read_input_bytes

__all__ = ["Runs", "DEFAULT_ALT_N_COL", "load_runs", "alt_counts"]

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
