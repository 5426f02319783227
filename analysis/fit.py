"""Fit Chinchilla scaling laws to a CSV of runs: ``python -m analysis.fit``.

    python -m analysis.fit --results FILE [--n-col C] [--d-col C | --c-col C]
        [--loss-col C] [--approach 1|2|3|all] [--bootstrap K] [--ci 0.95]
        [--holdout-top-c K] [--predict-c C ...] [--group-col COL] [--curves DIR]
        [--approach1-from curves|endpoints] [--diagnostics [--baseline-loss L] [--alt-n-col COL]]
        [--out fit.json] [--plots DIR]

Reads any CSV with a model-size column (N), a tokens column (D) or a FLOPs column (C,
then D = C / (6 N)) and a loss column; rows whose ``status`` column exists and is not
``completed`` are dropped.  Defaults match the sweep's ``results.csv``
(``n_params``, ``tokens``, ``val_loss``).  For Chinchilla's data (Epoch AI's extraction)::

    python -m analysis.fit --results ../shared/data/chinchilla/svg_extracted_data.csv \\
        --n-col "Model Size" --c-col "Training FLOP" --loss-col loss --drop-top-loss 5

The JSON (structure in :mod:`scaling.laws`) goes to ``--out``, with a readable report
on stdout; without ``--out`` the JSON goes to stdout and the report to stderr.  Bad
input ends with one line on stderr and exit code 2, before any fitting and without
touching existing outputs.  Data that fit no valid law (an exponent <= 0, E at zero) give
a fit written with ``"degenerate": true`` and its reasons, said in the report too; the
JSON is strict (null, never NaN).  The fitting itself lives in :mod:`scaling.laws`; approach 1 on
annealed endpoints, approach 2's intervals and the diagnostics (``--diagnostics``, which
needs ``--bootstrap``) are wired in :mod:`analysis.fit_checks`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The fits' linear algebra is on tiny matrices, where BLAS worker threads only contend
# for the cores (on a busy 2-core machine they made scipy's L-BFGS-B ~100x slower).
# Effective only when this module is the first to load numpy, as with ``python -m``.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from analysis import fit_checks  # noqa: E402
from scaling import laws  # noqa: E402
from scaling.errors import (ArgumentParser, UsageError, check_out_dir, check_out_file,  # noqa: E402
                            exit_on_usage_error, read_input_bytes, read_input_text)

APPROACHES = ("1", "2", "3", "all")
MAX_BOOTSTRAP = 100_000  # resamples: the resample-by-run count matrix is held in memory at once


def default_data_dir() -> Path:
    """The shared data directory: $SCALING_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get("SCALING_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def chinchilla_csv() -> Path:
    """Epoch AI's extraction of Chinchilla's Figure-4 runs."""
    return default_data_dir() / "chinchilla" / "svg_extracted_data.csv"


# ------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Runs:
    """Validated runs: N, D, loss and compute C per run (float64 arrays)."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray
    budget: np.ndarray | None = None  # IsoFLOP budget label per run, when given
    group: np.ndarray | None = None  # group value per run (str), when --group-col

    def __len__(self) -> int:
        return int(self.N.size)

    def subset(self, mask) -> "Runs":
        return Runs(
            N=self.N[mask],
            D=self.D[mask],
            L=self.L[mask],
            C=self.C[mask],
            budget=None if self.budget is None else self.budget[mask],
            group=None if self.group is None else self.group[mask],
        )


def _numeric(df, col, path):
    import pandas as pd

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
    import pandas as pd

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


def load_curves(sweep_dir, *, n_key: str = "n_params", loss_key: str = "loss", flops_key: str = "flops"):
    """Training curves [(N, flops, loss)] from ``sweep_dir/runs/<run_id>/{summary.json,metrics.jsonl}``.

    Lines without ``loss_key`` (e.g. eval-only lines) are skipped; runs without a
    metrics file or summary are skipped; no usable run is a UsageError.
    """
    root = Path(sweep_dir)
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    if not runs_dir.is_dir():
        raise UsageError(f"--curves directory not found: {sweep_dir}")
    curves = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary, metrics = run / "summary.json", run / "metrics.jsonl"
        if not (summary.is_file() and metrics.is_file()):
            continue
        try:
            meta = json.loads(read_input_text(summary, "run summary"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{summary} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise UsageError(f"{summary} is not a JSON object")
        if meta.get("status", "completed") != "completed":
            continue
        if n_key not in meta:
            raise UsageError(f"{summary} has no {n_key!r}")
        fl, lo = [], []
        for i, line in enumerate(read_input_text(metrics, "metrics file").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{metrics} line {i + 1} is not valid JSON") from None
            if not isinstance(rec, dict) or rec.get(loss_key) is None or rec.get(flops_key) is None:
                continue
            fl.append(_number(rec[flops_key], f"{metrics} line {i + 1}: {flops_key}"))
            lo.append(_number(rec[loss_key], f"{metrics} line {i + 1}: {loss_key}"))
        if len(fl) >= 2:
            curves.append((_number(meta[n_key], f"{summary}: {n_key}"), np.array(fl), np.array(lo)))
    if len(curves) < 2:
        raise UsageError(
            f"approach 1 needs training curves of at least 2 runs under {runs_dir} "
            f"(runs/<id>/metrics.jsonl with {flops_key!r} and {loss_key!r}, summary.json with {n_key!r}); "
            f"found {len(curves)}"
        )
    return curves


def _number(v, where: str) -> float:
    """A JSON value that must be a number (bools and strings are refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UsageError(f"{where} is not a number: {str(v)[:40]!r}")
    try:
        return float(v)
    except OverflowError:
        raise UsageError(f"{where} is out of the floating-point range") from None


# ------------------------------------------------------------------------ fitting


def _approach2_precheck(runs: Runs, rtol: float, min_runs: int = 3) -> str | None:
    """None if approach 2 is possible, else why not (no fitting done)."""
    labels, values = laws.isoflop_groups(runs.C, runs.budget, rtol)
    usable = sum(np.unique(runs.N[labels == j]).size >= min_runs for j in range(values.size))
    if usable < 2:
        return (
            f"approach 2 needs at least 2 IsoFLOP budgets with >= {min_runs} model sizes each; "
            f"found {usable} of {values.size} budgets"
            + ("" if runs.budget is not None else f" (runs grouped by C within {rtol:g}; see --budget-col)")
        )
    return None


@dataclass(frozen=True)
class FitOptions:
    approaches: frozenset[str] = frozenset({"3"})
    bootstrap: int = 0
    ci: float = 0.95
    seed: int = 0
    holdout_top_c: int = 0
    predict_c: tuple[float, ...] = ()
    delta: float = laws.DEFAULT_DELTA
    budget_tol: float = 0.1
    boot_starts: str = "best"
    progress: bool = True
    approach2_optional: bool = False  # --approach all: skip approach 2 (with a note) when impossible


def validate(runs: Runs, opts: FitOptions, *, where: str = "") -> dict[str, str]:
    """Check everything that can be checked before fitting; returns skip notes for
    approaches that "all" cannot run here.  UsageError on bad input."""
    pre = f"{where}: " if where else ""
    notes: dict[str, str] = {}
    if "3" in opts.approaches and len(runs) < laws.N_PARAMS:
        raise UsageError(
            f"{pre}{len(runs)} runs is fewer than the {laws.N_PARAMS} parameters of "
            "L = E + A/N^alpha + B/D^beta"
        )
    if opts.holdout_top_c and len(runs) - opts.holdout_top_c < laws.N_PARAMS:
        raise UsageError(
            f"{pre}--holdout-top-c {opts.holdout_top_c} leaves {len(runs) - opts.holdout_top_c} of "
            f"{len(runs)} runs, fewer than the {laws.N_PARAMS} parameters"
        )
    if "2" in opts.approaches:
        why = _approach2_precheck(runs, opts.budget_tol)
        if why is not None:
            if opts.approach2_optional:
                notes["2"] = why
            else:
                raise UsageError(pre + why)
    return notes


def fit_runs(runs: Runs, opts: FitOptions, *, skip: dict[str, str] | None = None) -> dict:
    """All requested fits on one set of runs (already validated) -> the JSON dict."""
    skip = skip or {}
    out: dict = {}
    if "3" in opts.approaches:
        fit = laws.fit_approach3(runs.N, runs.D, runs.L, delta=opts.delta)
        out.update(fit.to_dict())
        boot = None
        if opts.bootstrap:
            boot = laws.bootstrap_approach3(
                runs.N,
                runs.D,
                runs.L,
                fit,
                opts.bootstrap,
                seed=opts.seed,
                level=opts.ci,
                starts=opts.boot_starts,
                progress=opts.progress,
            )
            out["ci_level"] = opts.ci
            out["ci"] = boot.ci()
            out["bootstrap"] = boot.to_dict()
        if opts.predict_c:
            preds = []
            for c in opts.predict_c:
                n_opt, d_opt, l_opt = (float(v) for v in fit.optimal(c))
                p = {"C": float(c), "N_opt": n_opt, "D_opt": d_opt, "loss": l_opt}
                if boot is not None:
                    p["ci"] = boot.optimal_interval(c)
                preds.append(p)
            out["predict"] = preds
        if opts.holdout_top_c:
            out["holdout"] = laws.holdout_top_c(
                runs.N, runs.D, runs.L, opts.holdout_top_c, C=runs.C, delta=opts.delta
            )
    if "2" in opts.approaches:
        if "2" in skip:
            out["approach2"] = {"not_run": skip["2"]}
        else:
            out["approach2"] = _optional(
                opts.approach2_optional,
                lambda: laws.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget, rtol=opts.budget_tol),
            )
    return json_safe(out)


def _optional(optional: bool, fit):
    """``fit()``, or, when the approach is optional (``--approach all``) and its data turn out
    unusable only once fitted, ``{"not_run": why}``, so that the other fits are still written."""
    try:
        return fit()
    except UsageError as e:
        if not optional:
            raise
        return {"not_run": str(e)}


def json_safe(obj):
    """``obj`` with every non-finite float (and numpy scalar) made JSON-safe: NaN and infinity
    become None (null), so that the JSON written is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# ------------------------------------------------------------------------ report


def _g(x, fmt: str = ".6g") -> str:
    return "n/a" if x is None else format(x, fmt)


def _degenerate(what: str, r: dict) -> list[str]:
    if not r.get("degenerate"):
        return []
    return [f"  DEGENERATE {what}: not a valid scaling law ({'; '.join(r.get('degenerate_reasons', []))}); "
            "its exponents and predictions are not to be trusted"]


def report(result: dict, *, title: str = "") -> str:
    """A readable summary of one fit dict."""
    lines = [f"== {title} ==" if title else None]
    if "E" in result:
        ci = result.get("ci", {})
        lines.append(f"approach 3 (Huber delta {result['delta']:g}, {result['n_points']} runs, "
                     f"{result['n_starts']} starts, {result['n_starts_at_best']} reached the best; "
                     f"objective {result['loss']:.6g})")
        for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
            iv = f"  [{_g(ci[k][0])}, {_g(ci[k][1])}]" if k in ci else ""
            lines.append(f"  {k:>5} = {_g(result[k])}{iv}")
        if ci:
            n_res = result["bootstrap"]["n_resamples"]
            lines.append(f"  ({result['ci_level']:.0%} percentile intervals, {n_res} resamples)")
        lines += _degenerate("fit (approach 3)", result)
        for p in result.get("predict", []):
            lines.append(
                f"predict C={p['C']:.4g}: N_opt={_g(p['N_opt'], '.4g')}  D_opt={_g(p['D_opt'], '.4g')}  "
                f"loss={_g(p['loss'], '.5g')}"
            )
        if "holdout" in result:
            h = result["holdout"]
            lines.append(f"hold-out of the {h['k']} largest-compute runs (fit on the rest):")
            lines.append(f"  {'C':>10} {'N':>10} {'D':>10} {'observed':>9} {'predicted':>9} {'rel.err':>8}")
            for r in h["runs"]:
                lines.append(
                    f"  {r['C']:10.4g} {r['N']:10.4g} {r['D']:10.4g} {r['observed']:9.5g} "
                    f"{_g(r['predicted'], '9.5g')} {_g(r['rel_error'], '+8.4f')}"
                )
            lines.append(f"  mean |rel. error| = {_g(h['mean_abs_rel_error'], '.4f')}")
            lines += _degenerate("hold-out fit", h["fit"])
    a2 = result.get("approach2")
    if a2 is not None:
        if "not_run" in a2:
            lines.append(f"approach 2 not run: {a2['not_run']}")
        else:
            lines.append(f"approach 2 (IsoFLOP, {len(a2['minima'])} budgets): a = {_g(a2['a'], '.4f')}, "
                         f"b = {_g(a2['b'], '.4f')}")
            lines += _degenerate("fit (approach 2)", a2)
    a1 = result.get("approach1")
    if a1 is not None and "not_run" in a1:
        lines.append(f"approach 1 not run: {a1['not_run']}")
    elif a1 is not None:
        lines.append(f"approach 1 (envelope of {a1['n_runs']} curves): a = {_g(a1['a'], '.4f')}, "
                     f"b = {_g(a1['b'], '.4f')}")
        lines += _degenerate("fit (approach 1)", a1)
    lines += fit_checks.report_lines(result)
    return "\n".join(x for x in lines if x is not None)


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m analysis.fit",
        description="Fit Chinchilla scaling laws (approaches 1, 2, 3) to a CSV of runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--results", required=True, help="CSV of runs, one row per run")
    p.add_argument("--n-col", default="n_params", help="column with the parameter count N")
    p.add_argument("--d-col", default="tokens", help="column with the training tokens D")
    p.add_argument("--c-col", default=None, help="column with training FLOPs C; D = C/(6N) when the D column is absent")
    p.add_argument("--loss-col", default="val_loss", help="column with the final loss")
    p.add_argument("--budget-col", default="budget", help="IsoFLOP budget column for approach 2 (used when present)")
    p.add_argument("--budget-tol", type=float, default=0.1,
                   help="without a budget column, runs whose C agree within this relative tolerance share a budget")
    p.add_argument("--group-col", default=None, help="fit one law per value of this column (e.g. arm)")
    p.add_argument("--drop-top-loss", type=int, default=0, help="drop the K highest-loss runs first (Epoch AI drop 5)")
    p.add_argument("--approach", choices=APPROACHES, default="3",
                   help="which fit(s): 3 = parametric L(N, D); 2 = IsoFLOP parabolas; 1 = training-curve envelope "
                        "(needs --curves); all = every one the input allows")
    p.add_argument("--curves", default=None, help="sweep directory with runs/<id>/metrics.jsonl (approach 1)")
    p.add_argument("--curve-loss-key", default="loss", help="metrics.jsonl key of the loss for approach 1")
    p.add_argument("--delta", type=float, default=laws.DEFAULT_DELTA, help="Huber delta of approach 3")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K", help="K bootstrap resamples of the runs (0: none)")
    p.add_argument("--bootstrap-starts", choices=("best", "grid"), default="best",
                   help="starts of each bootstrap refit: 32 of the grid starts that reached the full-data "
                        "optimum, or the whole grid (about 1 s per resample)")
    p.add_argument("--ci", type=float, default=0.95, help="level of the percentile intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--holdout-top-c", type=int, default=0, metavar="K",
                   help="also fit without the K largest-compute runs and predict them")
    p.add_argument("--predict-c", type=float, action="append", default=[], metavar="C",
                   help="print compute-optimal N, D and loss for budget C (repeatable)")
    p.add_argument("--out", default=None, help="write the JSON here (else to stdout, report to stderr)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    fit_checks.add_arguments(p)
    return p


def _options(args) -> FitOptions:
    if args.approach == "all":
        approaches = frozenset({"1", "2", "3"})
    else:
        approaches = frozenset({args.approach})
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.bootstrap > MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap must be at most {MAX_BOOTSTRAP}, got {args.bootstrap}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not 0 < args.ci < 1:
        raise UsageError(f"--ci must be in (0, 1), got {args.ci}")
    if not (math.isfinite(args.delta) and args.delta > 0):
        raise UsageError(f"--delta must be > 0, got {args.delta}")
    if args.holdout_top_c < 0:
        raise UsageError(f"--holdout-top-c must be >= 0, got {args.holdout_top_c}")
    if not (math.isfinite(args.budget_tol) and args.budget_tol >= 0):
        raise UsageError(f"--budget-tol must be >= 0, got {args.budget_tol}")
    for c in args.predict_c:
        if not (math.isfinite(c) and c > 0):
            raise UsageError(f"--predict-c must be a positive FLOP count, got {c}")
    needs3 = args.bootstrap or args.holdout_top_c or args.predict_c
    if needs3 and "3" not in approaches:
        raise UsageError("--bootstrap, --holdout-top-c and --predict-c use approach 3; pass --approach 3 or all")
    if args.approach == "1" and not args.curves and args.approach1_from == "curves":
        raise UsageError("--approach 1 needs --curves DIR (a sweep directory with runs/<id>/metrics.jsonl)")
    opts = FitOptions(
        approaches=approaches,
        bootstrap=args.bootstrap,
        ci=args.ci,
        seed=args.seed,
        holdout_top_c=args.holdout_top_c,
        predict_c=tuple(args.predict_c),
        delta=args.delta,
        budget_tol=args.budget_tol,
        boot_starts=args.bootstrap_starts,
        progress=not args.no_progress,
        approach2_optional=args.approach == "all",
    )
    return opts


@exit_on_usage_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    opts = _options(args)
    if args.out is not None:
        check_out_file(args.out, "--out")
    if args.plots is not None:
        check_out_dir(args.plots, "--plots")
    extra = fit_checks.options(args, opts.bootstrap)
    # ---- everything below up to the fits only reads and validates input
    runs = load_runs(
        args.results,
        n_col=args.n_col,
        d_col=args.d_col,
        c_col=args.c_col,
        loss_col=args.loss_col,
        budget_col=args.budget_col,
        group_col=args.group_col,
        drop_top_loss=args.drop_top_loss,
    )
    curves = None
    if args.curves and "1" in opts.approaches and extra.approach1_from == "curves":
        curves = load_curves(args.curves, loss_key=args.curve_loss_key)
    if args.group_col is not None:
        values = sorted(set(runs.group.tolist()))
        parts = {v: runs.subset(runs.group == v) for v in values}
        skips = {v: validate(parts[v], opts, where=f"{args.group_col}={v}") for v in values}
    else:
        skips = validate(runs, opts)
    alt_n = fit_checks.alt_counts(load_runs, args, runs, extra)
    a1_endpoints = None
    if "1" in opts.approaches and extra.approach1_from == "endpoints":  # cheap: before the slow fits
        a1_endpoints, curves = fit_checks.approach1_endpoints(args, runs, required=args.approach == "1")

    # ---- fits
    if args.group_col is not None:
        result: dict = {"group_col": args.group_col, "groups": {}}
        for v in values:
            result["groups"][v] = fit_runs(parts[v], opts, skip=skips[v])
            sel = runs.group == v
            fit_checks.extend(result["groups"][v], parts[v], opts, extra, None if alt_n is None else alt_n[sel])
            if a1_endpoints is not None and v in a1_endpoints:
                result["groups"][v]["approach1"] = a1_endpoints[v]
    else:
        result = fit_runs(runs, opts, skip=skips)
        fit_checks.extend(result, runs, opts, extra, alt_n)
    if a1_endpoints is not None:
        if None in a1_endpoints:
            result["approach1"] = a1_endpoints[None]
    elif "1" in opts.approaches:
        if curves is not None:
            result["approach1"] = json_safe(_optional(args.approach == "all", lambda: laws.fit_approach1(curves)))
        else:
            result["approach1"] = {"not_run": "no --curves directory given"}
    result["input"] = {
        "results": str(args.results),
        "n_col": args.n_col,
        "d_col": args.d_col,
        "c_col": args.c_col,
        "loss_col": args.loss_col,
        "drop_top_loss": args.drop_top_loss,
        "n_runs": len(runs),
    }

    # ---- outputs
    if args.group_col is not None:
        text = "\n".join(report(r, title=f"{args.group_col} = {v}") for v, r in result["groups"].items())
        if "approach1" in result:
            text += "\n" + report({"approach1": result["approach1"]})
    else:
        text = report(result)
    if args.plots is not None:
        from analysis import plots

        if args.group_col is not None:
            for v, r in result["groups"].items():
                plots.make_all(Path(args.plots) / _safe(v), parts[v], r, curves=None)
        else:
            plots.make_all(Path(args.plots), runs, result, curves=curves)
    if args.out is not None:
        _write_json_atomic(Path(args.out), result)
        print(text)
    else:
        print(text, file=sys.stderr)
        print(json.dumps(json_safe(result), indent=2, allow_nan=False))
    return 0


def _safe(v: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(v)) or "_"


if __name__ == "__main__":
    sys.exit(main())
