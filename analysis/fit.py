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

The JSON (structure in :mod:`scaling.laws.result`) goes to ``--out``, with a readable report
on stdout; without ``--out`` the JSON goes to stdout and the report to stderr.  Bad
input ends with one line on stderr and exit code 2, before any fitting and without
touching existing outputs.  Data that fit no valid law (an exponent <= 0, E at zero) give
a fit written with ``"degenerate": true`` and its reasons, said in the report too; the
JSON is strict (null, never NaN).  The reading, fitting and report live in
:mod:`scaling.laws`; this module parses the flags, draws the plots and writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# The fits' linear algebra is on tiny matrices, where BLAS worker threads only contend for
# the cores.  Effective only when this module is the first to load numpy, as with ``python -m``.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from analysis import plots  # noqa: E402
from scaling.errors import ArgumentParser, UsageError, check_out_dir, check_out_file, exit_on_usage_error  # noqa: E402
from scaling.io import atomic_write_text  # noqa: E402
from scaling.laws import DEFAULT_DELTA  # noqa: E402
from scaling.laws.approach1 import annealed_curves  # noqa: E402
from scaling.laws.fit import FitOptions, approach1_from_curves, approach1_from_endpoints, fit_table, validate  # noqa: E402
from scaling.laws.report import report_output  # noqa: E402
from scaling.laws.runs import DEFAULT_ALT_N_COL, alt_counts, load_runs  # noqa: E402
from scaling.paths import data_dir  # noqa: E402
from scaling.run_curves import load_curves, load_endpoints  # noqa: E402

__all__ = ["main", "build_parser", "chinchilla_csv", "load_runs", "UsageError"]

APPROACHES = ("1", "2", "3", "all")
MAX_BOOTSTRAP = 100_000  # resamples: the resample-by-run count matrix is held in memory at once


def chinchilla_csv() -> Path:
    """Epoch AI's extraction of Chinchilla's Figure-4 runs, in the shared data directory."""
    return data_dir() / "chinchilla" / "svg_extracted_data.csv"


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
    p.add_argument(
        "--budget-tol",
        type=float,
        default=0.1,
        help="without a budget column, runs whose C agree within this relative tolerance share a budget",
    )
    p.add_argument("--group-col", default=None, help="fit one law per value of this column (e.g. arm)")
    p.add_argument("--drop-top-loss", type=int, default=0, help="drop the K highest-loss runs first (Epoch AI drop 5)")
    p.add_argument(
        "--approach",
        choices=APPROACHES,
        default="3",
        help="which fit(s): 3 = parametric L(N, D); 2 = IsoFLOP parabolas; 1 = training-curve envelope "
        "(needs --curves); all = every one the input allows",
    )
    p.add_argument("--curves", default=None, help="sweep directory with runs/<id>/metrics.jsonl (approach 1)")
    p.add_argument("--curve-loss-key", default="loss", help="metrics.jsonl key of the loss for approach 1")
    p.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="Huber delta of approach 3")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K", help="K bootstrap resamples of the runs (0: none)")
    p.add_argument(
        "--bootstrap-starts",
        choices=("best", "grid"),
        default="best",
        help="starts of each bootstrap refit: 32 of the grid starts that reached the full-data "
        "optimum, or the whole grid (slower: every refit from all 4,500 starts)",
    )
    p.add_argument("--ci", type=float, default=0.95, help="level of the percentile intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--holdout-top-c",
        type=int,
        default=0,
        metavar="K",
        help="also fit without the K largest-compute runs and predict them",
    )
    p.add_argument(
        "--predict-c",
        type=float,
        action="append",
        default=[],
        metavar="C",
        help="print compute-optimal N, D and loss for budget C (repeatable)",
    )
    p.add_argument("--out", default=None, help="write the JSON here (else to stdout, report to stderr)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--approach1-from",
        choices=("curves", "endpoints"),
        default="curves",
        help="approach 1's input: the envelope of raw training curves (--curves DIR), or annealed "
        "endpoints only (each run's final evaluated loss or its metrics lines marked endpoint, "
        "from --curves DIR; without it, the results rows), used where the sizes bracket the optimum",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="check the law (regime, non-degenerate, stable, agreement, extrapolation) and give a "
        "verdict; needs --bootstrap",
    )
    p.add_argument(
        "--baseline-loss",
        type=float,
        default=None,
        metavar="L",
        help="count-model (trigram) loss on the same validation split, in the loss column's units, "
        "for the regime diagnostic",
    )
    p.add_argument(
        "--alt-n-col",
        default=None,
        metavar="COL",
        help=f"a second parameter count for the stability diagnostic (default {DEFAULT_ALT_N_COL} when the CSV has it)",
    )
    return p


def _options(args) -> FitOptions:
    """The fit options of the flags; UsageError for values no fit can use."""
    approaches = frozenset({"1", "2", "3"}) if args.approach == "all" else frozenset({args.approach})
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
    if args.diagnostics and not args.bootstrap:
        raise UsageError("--diagnostics needs --bootstrap K (the checks use approach 3's intervals)")
    if args.baseline_loss is not None:
        if not args.diagnostics:
            raise UsageError("--baseline-loss is used by --diagnostics; pass both")
        if not (np.isfinite(args.baseline_loss) and args.baseline_loss > 0):
            raise UsageError(f"--baseline-loss must be a positive loss, got {args.baseline_loss}")
    if args.alt_n_col is not None and not args.diagnostics:
        raise UsageError("--alt-n-col is used by --diagnostics; pass both")
    return FitOptions(
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
        diagnostics=args.diagnostics,
        baseline_loss=args.baseline_loss,
    )


def _approach1(args, runs, curves):
    """Approach 1's results (per group, or key None over all runs) and the curves to plot with
    them; fitted before the slow fits, so that input approach 1 cannot use stops early."""
    if args.approach1_from == "curves":
        return {None: approach1_from_curves(curves, optional=args.approach == "all")}, curves
    if args.curves:
        sources = {None: load_endpoints(args.curves)}
    elif runs.group is not None:
        sources = {v: (part.N, part.C, part.L) for v, part in runs.groups().items()}
    else:
        sources = {None: (runs.N, runs.C, runs.L)}
    fits = approach1_from_endpoints(sources, required=args.approach == "1", group_col=args.group_col)
    return fits, annealed_curves(*sources[None]) if None in sources else None


@exit_on_usage_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    opts = _options(args)
    if args.out is not None:
        check_out_file(args.out, "--out")
    if args.plots is not None:
        check_out_dir(args.plots, "--plots")
    # ---- everything below up to the slow fits only reads and validates input
    load_kw = dict(
        d_col=args.d_col,
        c_col=args.c_col,
        loss_col=args.loss_col,
        budget_col=args.budget_col,
        group_col=args.group_col,
        drop_top_loss=args.drop_top_loss,
    )
    runs = load_runs(args.results, n_col=args.n_col, **load_kw)
    curves = None
    if args.curves and "1" in opts.approaches and args.approach1_from == "curves":
        curves = load_curves(args.curves, loss_key=args.curve_loss_key)
    if args.group_col is not None:
        skips = {v: validate(part, opts, where=f"{args.group_col}={v}") for v, part in runs.groups().items()}
    else:
        skips = validate(runs, opts)
    alt_n = (
        alt_counts(args.results, runs, col=args.alt_n_col, n_col=args.n_col, **load_kw) if opts.diagnostics else None
    )
    a1, curves = _approach1(args, runs, curves) if "1" in opts.approaches else ({}, curves)

    # ---- fits
    output = fit_table(
        runs,
        opts,
        skips=skips,
        group_col=args.group_col,
        alt_N=alt_n,
        approach1=a1,
        input={
            "results": str(args.results),
            "n_col": args.n_col,
            "d_col": args.d_col,
            "c_col": args.c_col,
            "loss_col": args.loss_col,
            "drop_top_loss": args.drop_top_loss,
            "n_runs": len(runs),
        },
    )

    # ---- outputs
    text = report_output(output)
    if args.plots is not None:
        if output.groups is not None:
            parts = runs.groups()
            for v, r in output.groups.items():
                plots.make_all(Path(args.plots) / _safe(v), parts[v], r, curves=None)
        else:
            plots.make_all(Path(args.plots), runs, output.fit, curves=curves)
    result = json.dumps(output.to_dict(), indent=2, allow_nan=False)
    if args.out is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, result + "\n")
        print(text)
    else:
        print(text, file=sys.stderr)
        print(result)
    return 0


def _safe(v: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(v)) or "_"


if __name__ == "__main__":
    sys.exit(main())
