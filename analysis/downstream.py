"""Downstream skill against pretraining compute: python -m analysis.downstream --results
DIR/downstream.csv [--metric ft_accuracy] [--compute-col flops_6nd] [--baseline X] [--out PNG]

Reads the table ``python -m experiments.finetune --from-sweep`` writes (one row per pretrained
run: its sweep columns and the fine-tuned held-out metrics ``ft_*``), prints the rows sorted
by compute with the metric's Spearman rank correlation against compute, and plots the metric
against pretraining compute (log x), one marker per model size (n_params), with an optional
horizontal line for a baseline (e.g. the bag-of-bytes accuracy).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis.plot_style import MARKERS, sci
from scaling.errors import ArgumentParser, UsageError, check_out_file, exit_on_usage_error, read_input_text


def read_table(path: str | Path, compute_col: str, metric: str) -> list[dict]:
    text = read_input_text(path, "downstream table")
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise UsageError(f"downstream table {path} has no rows")
    for col in (compute_col, metric, "n_params", "run_id"):
        if col not in rows[0]:
            raise UsageError(f"downstream table {path} has no column {col!r}")
    out = []
    for r in rows:
        try:
            c, m = float(r[compute_col]), float(r[metric])
        except ValueError:
            continue
        if math.isfinite(c) and c > 0 and math.isfinite(m):
            out.append({"run_id": r["run_id"], "n_params": int(float(r["n_params"])), "compute": c, "metric": m})
    if not out:
        raise UsageError(f"downstream table {path} has no row with a positive {compute_col} and a numeric {metric}")
    return sorted(out, key=lambda r: r["compute"])


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than two points."""
    if len(x) < 2:
        return float("nan")

    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def plot(rows: list[dict], metric: str, compute_col: str, baseline: float | None) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    sizes = sorted({r["n_params"] for r in rows})
    for i, n in enumerate(sizes):
        pts = [r for r in rows if r["n_params"] == n]
        ax.plot(
            [r["compute"] for r in pts], [r["metric"] for r in pts], MARKERS[i % len(MARKERS)], label=f"N = {sci(n)}"
        )
    if baseline is not None:
        ax.axhline(baseline, color="0.5", linestyle="--", label="baseline")
    ax.set_xscale("log")
    ax.set_xlabel(f"pretraining compute ({compute_col}, FLOPs)")
    ax.set_ylabel(f"held-out {metric.removeprefix('ft_')} after fine-tuning")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m analysis.downstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", required=True, help="downstream.csv of experiments.finetune --from-sweep")
    p.add_argument("--metric", default="ft_accuracy", help="column to plot (default: ft_accuracy)")
    p.add_argument("--compute-col", default="flops_6nd", help="pretraining compute column (default: flops_6nd)")
    p.add_argument("--baseline", type=float, help="draw a baseline's value of the metric")
    p.add_argument("--out", help="PNG to write (default: beside the table, downstream.png)")
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    rows = read_table(args.results, args.compute_col, args.metric)
    out = Path(args.out) if args.out else Path(args.results).with_name("downstream.png")
    check_out_file(out, "--out")
    for r in rows:
        print(
            f"{r['run_id']:24s} N={r['n_params']:>9d} C={r['compute']:.3g} {args.metric}={r['metric']:.4f}",
            file=sys.stderr,
        )
    rho = spearman([r["compute"] for r in rows], [r["metric"] for r in rows])
    plot(rows, args.metric, args.compute_col, args.baseline).savefig(out, dpi=120)
    result = {"runs": len(rows), "spearman_vs_compute": rho, "plot": str(out)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
