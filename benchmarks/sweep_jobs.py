"""Training a sweep in worker processes against one process: the wall time of the same sweep
with ``--jobs 1`` and ``--jobs J``, and the ratio.

    python benchmarks/sweep_jobs.py [--config experiments/configs/bench-smoke.yaml] [--jobs 2] [--repeats 1]
                                    [--out benchmarks/results/sweep_jobs_<backend>.json]

Each sweep runs as ``python -m experiments.sweep --config SPEC --out TMP --jobs N`` from a fresh
directory and a fresh compilation cache, so both pay the same compiles; the two alternate
(1, J, 1, J, ... ``--repeats`` times) and each wall time is the median of its repeats. The
runs train the same steps whichever process trains them; the script compares every run's
validation loss and records whether they are identical and their largest difference (a
worker's single XLA thread may sum in another order). Writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]

from benchmarks.record import result_path, write_result  # noqa: E402


def run_sweep(config: str, jobs: int, tmp: Path) -> tuple[float, dict[str, str]]:
    """Wall seconds of one sweep and its val_loss per run id."""
    out, cache = tmp / f"sweep-{jobs}-{time.monotonic_ns()}", tmp / f"cache-{time.monotonic_ns()}"
    env = dict(os.environ, SCALING_CACHE_DIR=str(cache))
    t0 = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config",
            config,
            "--out",
            str(out),
            "--jobs",
            str(jobs),
            "--train.progress",
            "false",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep with --jobs {jobs} failed: {p.stderr.strip().splitlines()[-1:]}")
    with open(out / "results.csv", newline="") as f:
        losses = {r["run_id"]: r["val_loss"] for r in csv.DictReader(f)}
    return wall, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/configs/bench-smoke.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    losses: dict[int, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-jobs-") as tmp:
        for jobs in (1, args.jobs) * args.repeats:
            wall, losses[jobs] = run_sweep(args.config, jobs, Path(tmp))
            walls[jobs].append(wall)
            print(f"--jobs {jobs}: {wall:.1f} s", flush=True)
    identical = losses[1] == losses[args.jobs]
    if losses[1].keys() != losses[args.jobs].keys():
        raise SystemExit(f"the sweeps with --jobs 1 and --jobs {args.jobs} finished different runs")
    diff = max(abs(float(losses[1][k] or "nan") - float(losses[args.jobs][k] or "nan")) for k in losses[1])
    one, many = statistics.median(walls[1]), statistics.median(walls[args.jobs])
    print(f"median wall: --jobs 1 {one:.1f} s, --jobs {args.jobs} {many:.1f} s; speed-up {one / many:.2f}x")
    print("validation losses identical" if identical else f"validation losses differ by up to {diff:.2e}")
    write_result(
        args.out or result_path("sweep_jobs"),
        {
            "config": args.config,
            "jobs": args.jobs,
            "wall_s": {str(k): v for k, v in walls.items()},
            "median_wall_s": {"1": one, str(args.jobs): many},
            "speedup": one / many,
            "results_identical": identical,
            "max_val_loss_difference": diff,
        },
    )


if __name__ == "__main__":
    main()
