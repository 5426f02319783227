"""Loss against compute per arm of a sweep, on a metric that compares across pretraining
objectives: ``arms_vs_compute.png`` under DIR/plots/ of a sweep whose arms differ in
``train.objective`` (drawn by :func:`analysis.sweep_plots.plot_sweep`).

Each completed run is a point at its compute (``flops_6nd``, C = 6ND: every objective runs the
same model over the same D tokens, so equal C is equal work) and its ``val_bpb``: bits per
UTF-8 byte, on the held-out split, of the tokens the run's objective predicts (all next tokens
for causal, the masked tokens for mlm, the corrupted spans for prefix_denoise;
:func:`scaling.evaluation.val_bits_per_byte`). Per byte rather than per token, so that
tokenizers compare too. A line joins each arm's best run of each compute budget (its IsoFLOP
minimum among the sampled sizes; each run is its own budget in a grid design). The axis label
and the legend say which tokens each arm is scored on.

    python -m analysis.objective_plots --sweep DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from analysis.plot_style import MARKERS
from analysis.run_plots import num
from scaling.sweep import Plan

__all__ = ["PREDICTS", "arm_objectives", "run_objectives", "arms_vs_compute", "main"]

PREDICTS = {
    "causal": "every next token",
    "mlm": "the masked tokens",
    "prefix_denoise": "the corrupted spans",
}
"""What each objective's val_bpb is scored on."""


def arm_objectives(plan: Plan) -> dict[str, str]:
    """The ``train.objective`` of each arm's runs (an arm's runs share it)."""
    return {str(r.arm): r.cfg.train.objective for r in getattr(plan, "runs", ()) if r.arm is not None}


def run_objectives(rows: list[dict], runs_dir: Path) -> dict[str, str]:
    """The objective of each arm as its runs' ``config.yaml`` under ``runs_dir`` record it."""
    out = {}
    for r in rows:
        try:
            cfg = yaml.safe_load((Path(runs_dir) / str(r.get("run_id")) / "config.yaml").read_text())
            out.setdefault(str(r.get("arm") or ""), cfg["train"].get("objective", "causal"))
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            continue
    return out


def _frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """The best run of each budget (its compute and loss), by compute."""
    best: dict[str, tuple[float, float]] = {}
    for c, loss, budget in points:
        if budget not in best or loss < best[budget][1]:
            best[budget] = (c, loss)
    return sorted(best.values())


def arms_vs_compute(rows: list[dict], objectives: dict[str, str]) -> Figure | None:
    """Validation bits per byte against C = 6ND, one colour per arm; None without a completed
    run that has both."""
    points: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        c, bpb = num(r.get("flops_6nd")), num(r.get("val_bpb"))
        if r.get("status") == "completed" and math.isfinite(bpb) and c > 0:
            budget = str(r.get("budget") or f"{c:.3g}")  # an IsoFLOP budget, else the run's own compute
            points.setdefault(str(r.get("arm") or ""), []).append((c, bpb, budget))
    if not points:
        return None
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    for i, (arm, pts) in enumerate(sorted(points.items())):
        obj = objectives.get(arm, "causal")
        label = f"{arm} ({obj}: {PREDICTS.get(obj, obj)})" if arm != obj else f"{arm}: {PREDICTS.get(obj, obj)}"
        color = f"C{i}"
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=color,
            marker=MARKERS[i % len(MARKERS)],
            alpha=0.6,
            label=label,
        )
        ax.plot(*zip(*_frontier(pts)), color=color, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("held-out bits per byte of the predicted tokens")
    ax.set_title("Loss against compute per objective (lines: the best run of each budget)", fontsize=10)
    ax.legend(fontsize=8, title="arm (objective: tokens scored)", title_fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.objective_plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", required=True, help="a sweep directory (results.csv and plan.json)")
    ap.add_argument("--out", help="the PNG to write (default: DIR/plots/arms_vs_compute.png)")
    args = ap.parse_args(argv)
    d = Path(args.sweep)
    try:
        with open(d / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        print(f"error: cannot read {d / 'results.csv'}: {e}", file=sys.stderr)
        return 2
    fig = arms_vs_compute(rows, run_objectives(rows, d / "runs"))
    if fig is None:
        print(f"error: no completed run with val_bpb and flops_6nd in {d / 'results.csv'}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else d / "plots" / "arms_vs_compute.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
