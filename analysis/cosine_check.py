"""Check warmup-stable-decay endpoints against cosine runs of the same N and D:

    python -m analysis.cosine_check --sweep DIR --runs RUN_ID [RUN_ID ...] [--min-lr-ratio 0.1]

For each completed run of a wsd sweep (a cooldown endpoint), train its cosine twin from
scratch: the run's own config (model, data, seed, tokens, peak lr, warmup, init) with
``optim.schedule cosine`` decaying to ``--min-lr-ratio`` of the peak, into
DIR/cosine_check/<run_id>/ (resumable like any run). Prints one line per run with both
validation losses and their relative difference, and writes DIR/cosine_check/check.json.
Hägele et al. (2024) find a cooldown of about 20% of the steps matches cosine to within a
fraction of a percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from scaling.errors import ArgumentParser, UsageError, exit_on_usage_error
from scaling.io import atomic_write_text
from scaling.run_dir import read_config, read_summary


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m analysis.cosine_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sweep", required=True, help="a sweep directory of a wsd sweep")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_ID", help="completed runs to check")
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=0.1,
        help="the cosine's final rate as a fraction of the peak (Chinchilla: 0.1)",
    )
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    sweep = Path(args.sweep)
    if not 0 <= args.min_lr_ratio <= 1:
        raise UsageError(f"--min-lr-ratio must be in [0, 1], got {args.min_lr_ratio}")
    todo = []
    for run_id in args.runs:
        run_dir = sweep / "runs" / run_id
        cfg = read_config(run_dir)
        summary = read_summary(run_dir)
        if summary is None or summary.get("status") != "completed":
            raise UsageError(f"{run_dir} is not a completed run")
        if cfg.optim.schedule != "wsd":
            raise UsageError(f"{run_dir} is not a wsd run (optim.schedule {cfg.optim.schedule})")
        twin = dataclasses.replace(
            cfg, optim=dataclasses.replace(cfg.optim, schedule="cosine", min_lr_ratio=args.min_lr_ratio)
        )
        todo.append((run_id, summary, twin))

    from scaling.train import Run  # the training stack loads once the input is checked

    rows = []
    for run_id, summary, twin in todo:
        with Run(twin, sweep / "cosine_check" / run_id) as run:
            cos = run.run()
        wsd_loss, cos_loss = float(summary["val_loss"]), float(cos["val_loss"])
        row = {
            "run_id": run_id,
            "n_params": summary.get("n_params"),
            "tokens": twin.train.tokens,
            "lr": twin.optim.lr,
            "warmup_steps": twin.optim.warmup_steps,
            "wsd_val_loss": wsd_loss,
            "cosine_val_loss": cos_loss,
            "rel_diff": wsd_loss / cos_loss - 1.0,
        }
        rows.append(row)
        print(
            f"{run_id}: wsd {wsd_loss:.4f}, cosine {cos_loss:.4f} (to {args.min_lr_ratio:g} of the peak), "
            f"wsd/cosine - 1 = {row['rel_diff']:+.2%}",
            flush=True,
        )
    worst = max(abs(r["rel_diff"]) for r in rows)
    print(f"largest |difference|: {worst:.2%} over {len(rows)} runs")
    atomic_write_text(
        sweep / "cosine_check" / "check.json",
        json.dumps({"min_lr_ratio": args.min_lr_ratio, "runs": rows, "max_abs_rel_diff": worst}, indent=1) + "\n",
    )
    return rows


if __name__ == "__main__":
    main()
