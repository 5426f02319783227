"""Curriculum arms against the baseline: per model size and token budget, the loss difference of
every arm to the ``none`` arm with a bootstrap interval.

:func:`arm_differences` resamples validation batches (the final checkpoints re-evaluated on the
fixed validation batches, :func:`scaling.difficulty.val_batch_losses`; paired between arms) and
seeds (when there are several); the CLI::

    python -m analysis.curriculum --results DIR/results.csv [--baseline none] [--bootstrap 2000]
        [--resample auto|batches|seeds] [--runs DIR/runs] [--out differences.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.difficulty import val_batch_losses
from scaling.errors import UsageError, exit_on_usage_error


def _interval(reps: np.ndarray, ci: float) -> tuple[float, float]:
    a = (1 - ci) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def arm_differences(
    df,
    *,
    baseline: str = "none",
    arm_col: str = "arm",
    size_col: str = "n_params",
    tokens_col: str = "tokens",
    loss_col: str = "val_loss",
    seed_col: str = "seed",
    id_col: str = "run_id",
    per_batch: dict | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    rng_seed: int = 0,
):
    """Per (model size, tokens) and arm: the loss difference ``arm - baseline`` (mean over seeds)
    with a percentile bootstrap interval.

    ``per_batch`` (run id -> per-validation-batch losses, the same batches for every run):
    resample validation batches (the same draw for both arms: a paired bootstrap) and, with
    2+ seeds, seeds too; without it, seeds only (2+ needed; else no interval). Seeds are
    paired between arms when both have the same seeds. Returns a DataFrame, one row per
    (size, tokens, arm != baseline)."""
    missing = [c for c in (arm_col, size_col, tokens_col, loss_col) if c not in df.columns]
    if missing:
        raise UsageError(f"results need column(s) {missing}; columns: {list(df.columns)}")
    if "status" in df.columns:
        df = df[df["status"].astype(str).str.strip() == "completed"]
    df = df.assign(**{arm_col: df[arm_col].astype(str)})
    if baseline not in set(df[arm_col]):
        raise UsageError(f"no completed run of the baseline arm {baseline!r} (arms: {sorted(set(df[arm_col]))})")
    if seed_col not in df.columns:
        df = df.assign(**{seed_col: 0})
    rng = np.random.default_rng(rng_seed)
    rows = []
    for (size, tokens), cell in df.groupby([size_col, tokens_col], sort=True):
        base = cell[cell[arm_col] == baseline].sort_values(seed_col)
        for arm in sorted(set(cell[arm_col]) - {baseline}):
            other = cell[cell[arm_col] == arm].sort_values(seed_col)
            row = {
                "arm": arm,
                size_col: size,
                tokens_col: tokens,
                "loss": float(other[loss_col].mean()),
                "loss_" + baseline: float(base[loss_col].mean()) if len(base) else math.nan,
                "n_seeds": len(other),
                "n_seeds_" + baseline: len(base),
            }
            if not len(base):
                rows.append({**row, "diff": math.nan, "lo": math.nan, "hi": math.nan, "resampled": "none"})
                continue
            row["diff"] = row["loss"] - row["loss_" + baseline]
            paired = list(other[seed_col]) == list(base[seed_col])
            ids_a = list(other[id_col]) if id_col in other.columns else []
            ids_b = list(base[id_col]) if id_col in base.columns else []
            have_batches = bool(per_batch is not None and ids_a and all(i in per_batch for i in ids_a + ids_b))
            if have_batches:
                A = np.stack([np.asarray(per_batch[i], np.float64) for i in ids_a])  # (seeds, batches)
                B = np.stack([np.asarray(per_batch[i], np.float64) for i in ids_b])
                reps = _boot_batches(A, B, paired, n_boot, rng)
                how = "batches" + ("+seeds" if max(len(A), len(B)) > 1 else "")
            elif len(other) > 1 or len(base) > 1:
                a, b = other[loss_col].to_numpy(float), base[loss_col].to_numpy(float)
                reps = _boot_seeds(a, b, paired, n_boot, rng)
                how = "seeds"
            else:
                reps, how = None, "none"
            lo, hi = _interval(reps, ci) if reps is not None else (math.nan, math.nan)
            rows.append({**row, "lo": lo, "hi": hi, "resampled": how})
    return pd.DataFrame(rows)


def _boot_seeds(a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int, rng) -> np.ndarray:
    if paired:
        d = a - b
        return d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    return a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1) - b[
        rng.integers(0, len(b), (n_boot, len(b)))
    ].mean(axis=1)


def _boot_batches(A: np.ndarray, B: np.ndarray, paired: bool, n_boot: int, rng) -> np.ndarray:
    if A.shape[1] != B.shape[1]:
        raise UsageError(
            f"runs were evaluated on different numbers of validation batches ({A.shape[1]} and "
            f"{B.shape[1]}); a paired bootstrap needs the same batches"
        )
    m = A.shape[1]
    bidx = rng.integers(0, m, (n_boot, m))  # one batch draw per replicate, shared by both arms
    a_rep = np.take_along_axis(A[:, None, :], bidx[None], axis=2).mean(axis=2)  # (seeds, n_boot)
    b_rep = np.take_along_axis(B[:, None, :], bidx[None], axis=2).mean(axis=2)
    if paired and len(A) > 1:
        s = rng.integers(0, len(A), (n_boot, len(A)))
        d = a_rep - b_rep
        return np.take_along_axis(d.T, s, axis=1).mean(axis=1)
    if len(A) > 1:
        a_rep = np.take_along_axis(a_rep.T, rng.integers(0, len(A), (n_boot, len(A))), axis=1).T
    if len(B) > 1:
        b_rep = np.take_along_axis(b_rep.T, rng.integers(0, len(B), (n_boot, len(B))), axis=1).T
    return a_rep.mean(axis=0) - b_rep.mean(axis=0)


def report(table) -> str:
    if not len(table):
        return "no arm to compare with the baseline"
    base = [c for c in table.columns if c.startswith("loss_")][0]
    lines = [f"{'arm':>10} {'n_params':>10} {'tokens':>10} {'loss':>8} {base:>10} {'diff':>9}  interval (resampled)"]
    for _, r in table.iterrows():
        iv = "-" if not np.isfinite(r["lo"]) else f"[{r['lo']:+.4f}, {r['hi']:+.4f}]"
        lines.append(
            f"{r['arm']:>10} {int(r['n_params']):>10} {int(r['tokens']):>10} {r['loss']:8.4f} "
            f"{r[base]:10.4f} {r['diff']:+9.4f}  {iv} ({r['resampled']})"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.curriculum",
        description="Per model size: the loss difference of every arm of a sweep to the "
        "baseline arm, with a bootstrap interval.",
    )
    p.add_argument("--results", required=True, help="results.csv of a sweep with arms")
    p.add_argument("--baseline", default="none", help="the arm compared against (default: none)")
    p.add_argument("--arm-col", default="arm")
    p.add_argument("--loss-col", default="val_loss")
    p.add_argument("--n-col", default="n_params")
    p.add_argument("--d-col", default="tokens")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument(
        "--resample",
        choices=("auto", "batches", "seeds"),
        default="auto",
        help="batches: re-evaluate every run's final checkpoint on its validation batches and resample "
        "them (paired between arms; seeds too when several); seeds: resample seeds only; auto: "
        "batches when the run directories are there (default)",
    )
    p.add_argument("--runs", default=None, help="directory of the runs (default: runs/ beside --results)")
    p.add_argument(
        "--out", default=None, help="write the table as JSON here (default: JSON to stdout, report to stderr)"
    )
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        raise UsageError(f"results file not found: {path}")
    if args.bootstrap < 1 or not 0 < args.ci < 1:
        raise UsageError("--bootstrap must be >= 1 and --ci in (0, 1)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    cols = dict(arm_col=args.arm_col, size_col=args.n_col, tokens_col=args.d_col, loss_col=args.loss_col)
    arm_differences(df, baseline=args.baseline, n_boot=1, **cols)  # validate before any compute
    runs_dir = Path(args.runs) if args.runs else path.parent / "runs"
    per_batch, checks = None, {}
    done = df[df["status"].astype(str).str.strip() == "completed"] if "status" in df.columns else df
    missing = (
        [r for r in done["run_id"] if not (runs_dir / str(r) / "config.yaml").is_file()]
        if "run_id" in df.columns
        else ["(no run_id column)"]
    )
    want = args.resample == "batches" or (args.resample == "auto" and not missing)
    if want:
        if "run_id" not in df.columns:
            raise UsageError(f"--resample batches needs a run_id column in {path}")
        if missing:
            raise UsageError(f"run directory {runs_dir / str(missing[0])} not found (--runs)")
        per_batch = {}
        for rid, loss in zip(done["run_id"], done[args.loss_col]):
            per_batch[rid] = val_batch_losses(runs_dir / str(rid))
            checks[rid] = float(np.mean(per_batch[rid]) - loss) if args.loss_col == "val_loss" else None
    table = arm_differences(df, baseline=args.baseline, per_batch=per_batch, n_boot=args.bootstrap, ci=args.ci, **cols)
    text = report(table)
    worst = max((abs(v) for v in checks.values() if v is not None), default=None)
    if worst is not None:
        text += f"\n(re-evaluated validation batches match results' val_loss to {worst:.2g})"
    out = {
        "baseline": args.baseline,
        "ci": args.ci,
        "bootstrap": args.bootstrap,
        "results": str(path),
        "rows": json.loads(table.to_json(orient="records")),
        "val_loss_recheck_max_abs": worst,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(text)
    else:
        print(json.dumps(out, indent=2))
        print(text, file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
