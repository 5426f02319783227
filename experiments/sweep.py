"""Plan and run a sweep of training runs over model size N and tokens D:

    python -m experiments.sweep [--config FILE] [--out DIR] [--dry-run] [--shard I/N]
        [--retry-diverged] [--section.field VALUE ...]

With no arguments it runs experiments/configs/default.yaml (an IsoFLOP design on the
Gutenberg corpus, byte tokens) into runs/sweep-default. The spec format, the sizing rule for
target parameter counts and the directory layout are documented in scaling/sweep/__init__.py.
Overrides --section.field VALUE apply to the base train config of every run.

Writes DIR/results.csv (one row per finished run of the plan, rebuilt from runs/*/summary.json;
run directories of another spec or config that shared DIR are left out and named),
DIR/runs/<run_id>/ (experiments.train's outputs) and, when every planned run has finished,
DIR/fit.json and DIR/plots/*.png. The fit: approach 3 with bootstrap intervals, approach 2 with
its intervals, approach 1 on the runs' annealed endpoints, approach 3 with the other parameter
count (the spec's fit.count, default sizing.count, is the N of the law), the seed-to-seed noise
beside the law's residuals, the count-model baseline of the validation tokens (cached in
DIR/baseline.json), and 13 diagnostics (regime, non-degenerate, stable, agreement, and the
extrapolation to the largest budget from a fit without it). The printed report ends with the
verdict: PASS, or each failing check with its number and threshold. The verdict is the
science, not an error: a sweep that ran exits with exit code 0 whatever the verdict; bad input
exits 2 before anything runs.

Rerunning the same command resumes: completed runs are kept, a partial run resumes from its
checkpoint, a diverged run is kept as diverged unless --retry-diverged (then it resumes from
its last good checkpoint; e.g. with --train.skip_nonfinite K). --shard I/N runs only the
plan's runs I, I+N, I+2N, ... so that N workers (a Slurm array: --shard
$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT, or hosts on a shared filesystem) split one
sweep; the worker that finishes last writes the fit and the plots.

On a CPU, --jobs (default auto: one worker per core, at most one per family of runs) trains
the plan in that many worker processes, each a --shard of the plan with one XLA thread (small
models leave cores idle in one process); the command then fits and plots once every worker
has finished. Killing the command stops its workers; a rerun resumes.

JAX's persistent compilation cache ($SCALING_CACHE_DIR/jax-compile; SCALING_COMPILE_CACHE=off
turns it off) keeps runs that compile the same program from compiling again.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from scaling import config_parse
from scaling.errors import ArgumentParser, UsageError, check_out_dir, exit_on_usage_error

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.yaml"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=None, help=f"sweep spec (YAML); default {DEFAULT_CONFIG.relative_to(CONFIGS.parent.parent)}"
    )
    p.add_argument("--out", default=None, help="sweep directory (default: runs/sweep-<spec name>, relative to cwd)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the planned runs with wall-time estimates from a short calibration on this "
        "machine, and train nothing",
    )
    p.add_argument("--no-calibration", action="store_true", help="with --dry-run: skip the timing calibration")
    p.add_argument(
        "--shard", default=None, metavar="I/N", help="run only the plan's runs I, I+N, I+2N, ... (0 <= I < N)"
    )
    p.add_argument(
        "--retry-diverged",
        action="store_true",
        help="retry diverged runs (from their last good checkpoint) instead of keeping them",
    )
    p.add_argument(
        "--jobs",
        default="auto",
        metavar="J",
        help="worker processes training the plan on a CPU, each a shard with one XLA thread "
        "(auto: one per core, at most one per family of runs; 1 elsewhere, with --shard and "
        "with several JAX processes)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker: train only
    p.add_argument("--estimates-out", default=None, help=argparse.SUPPRESS)  # a --jobs worker's --dry-run
    config_parse.add_config_arguments(p)
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    from scaling import sweep

    spec = sweep.load_spec(args.config or DEFAULT_CONFIG)
    jobs = _parse_jobs(args.jobs)
    if args.worker:  # trains its shard quietly; the command that started it fits and plots
        _die_with_parent()
        spec = dataclasses.replace(spec, fit=False)
    shard = sweep.parse_shard(args.shard)
    overrides = config_parse.overrides_from_args(args)
    out = check_out_dir(Path("runs") / f"sweep-{spec.name}" if args.out is None else args.out, "--out")
    base = config_parse.from_dict(config_parse.merge(spec.base, overrides))  # fail fast on bad overrides

    from scaling import compile_cache
    from scaling.train import setup_distributed  # jax is imported only after the spec is valid

    compile_cache.enable()
    setup_distributed(base)
    plan = sweep.make_plan(spec, overrides)  # with lr_scan, its lr is provisional until the scan is fitted
    scan = sweep.plan_scan(spec, overrides, plan) if spec.lr_scan else None
    if scan is None:  # with a scan, scaling.sweep.pilot checks both plans' outputs
        sweep.check_outputs(plan, out)
    runs = plan.shard(*shard)
    scan_runs = () if scan is None else scan.shard(*shard)
    if not args.worker and args.shard is None and base.dist.num_processes == 1:
        families = len({r.family for r in plan.runs}) + (0 if scan is None else len(scan.runs))
        if jobs == 0:
            jobs = _cpu_cores() if _cpu_cores() > 1 and _backend_is_cpu() else 1
        jobs = min(jobs, families)
    else:
        jobs = 1
    import jax

    is_main = jax.process_index() == 0
    if is_main and not args.worker:
        print(
            "# base config of every run (the plan sets model.n_layer, d_model, n_head, train.tokens, "
            "train.seed)\n" + plan.base.to_yaml(),
            file=sys.stderr,
        )
    if args.dry_run:
        estimates = None
        calib = None
        if not args.no_calibration and jobs > 1:  # calibrated in workers as they would train
            estimates = _worker_estimates(sys.argv[1:] if argv is None else argv, jobs)
        elif not args.no_calibration:
            calib = sweep.calibrate(runs)
            estimates, seen = {}, set()  # a shape compiles once per process
            for r in (*scan_runs, *runs):
                estimates[r.run_id] = calib.estimate(r, compiles=sweep.shape_key(r) not in seen)
                seen.add(sweep.shape_key(r))
            if args.estimates_out:
                Path(args.estimates_out).write_text(json.dumps({"runs": estimates, "calibration": calib.describe()}))
                return plan
        if is_main:
            if scan is not None:
                print(
                    f"# first, the learning-rate scan (into {out / 'lr_scan'}):\n"
                    + sweep.format_plan(scan, scan_runs, estimates, shard, workers=jobs)
                    + "\n# then the sweep:"
                )
            print(sweep.format_plan(plan, runs, estimates, shard, workers=jobs))
            if calib is not None:
                print(calib.describe())
            if estimates is not None and spec.fit:
                fit_s = sweep.fit_seconds(len(plan.runs), spec.fit_bootstrap)
                train_s = sum(
                    sweep.shard_wall(p, rs, estimates, jobs)
                    for p, rs in ((scan, scan_runs), (plan, runs))
                    if p is not None
                )
                print(
                    f"fit, diagnostics and plots: est. {sweep.format_duration(fit_s)}; the whole sweep: est. "
                    f"{sweep.format_duration(train_s + fit_s)}" + (f" with {jobs} workers" if jobs > 1 else "")
                )
        return plan
    if is_main and not args.worker:
        if scan is not None:
            print(sweep.format_plan(scan, scan_runs, None, shard), flush=True)
        print(sweep.format_plan(plan, runs, None, shard), flush=True)
        print(f"sweep directory: {out}", flush=True)
    if jobs > 1:
        _run_workers(sys.argv[1:] if argv is None else argv, jobs)
    from analysis.sweep_plots import plot_sweep
    from scaling.sweep import pilot

    if scan is not None:  # the scan, the rule (lr_rule.json), then the main plan made with it
        plan, result = pilot.run(
            spec, overrides, plan, out, shard=shard, retry_diverged=args.retry_diverged, plot=plot_sweep
        )
    else:
        if plan.lr_rule is not None:  # a fixed rule, recorded with the rates it gave
            plan = pilot.record_rule(plan, out, print if is_main else None)
        result = sweep.execute(plan, out, shard=shard, retry_diverged=args.retry_diverged, plot=plot_sweep)
    if is_main:
        _report(result, out)
    return result


def _parse_jobs(text: str) -> int:
    """--jobs: a positive integer, or auto (0 here: decided once the plan is known)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--jobs expects a positive integer or auto, got {text!r}")
    return int(text)


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _backend_is_cpu() -> bool:
    """Whether JAX would run on the CPU, asked in a child process: initialising an accelerator
    here would hold its memory away from the workers."""
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True, timeout=300
    )
    return probe.returncode == 0 and probe.stdout.strip().splitlines()[-1:] == ["cpu"]


def _worker_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        filter(None, [env.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"])
    )
    return env


def _spawn_worker(argv: list[str], i: int, jobs: int, extra: list[str], **popen) -> subprocess.Popen:
    """Worker ``i`` of ``jobs``: this command as ``--shard i/jobs --jobs 1 --worker`` plus ``extra``,
    with one XLA thread."""
    cmd = [sys.executable, "-m", "experiments.sweep", *argv, "--shard", f"{i}/{jobs}", "--jobs", "1", "--worker"]
    return subprocess.Popen([*cmd, *extra], env=_worker_env(), text=True, **popen)


def _worker_estimates(argv: list[str], jobs: int) -> dict:
    """--dry-run with workers: each worker calibrates its shard's shapes at once, one XLA thread
    each (as they train); their per-run estimates, merged."""
    with tempfile.TemporaryDirectory(prefix="sweep-estimates-") as tmp:
        paths = [Path(tmp) / f"{i}.json" for i in range(jobs)]
        procs = [
            _spawn_worker(
                argv, i, jobs, ["--estimates-out", str(paths[i])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for i in range(jobs)
        ]
        errors = [p.communicate()[1] for p in procs]
        estimates = {}
        for i, (p, path) in enumerate(zip(procs, paths)):
            if p.returncode != 0 or not path.is_file():
                raise UsageError(f"calibration worker {i} failed: {(errors[i].strip().splitlines() or ['?'])[-1]}")
            d = json.loads(path.read_text())
            estimates.update(d["runs"])
            print(f"worker {i}: {d['calibration']}")
    return estimates


def _run_workers(argv: list[str], jobs: int) -> None:
    """Train the plan in ``jobs`` worker processes (this command with --shard i/jobs --worker),
    each with one XLA thread, their output prefixed by [w<i>]; raise SystemExit when one fails.
    A worker dies with this process (PR_SET_PDEATHSIG), and stops when this one is interrupted."""
    print(f"training in {jobs} worker processes (each --shard i/{jobs} with one XLA thread)", flush=True)
    procs = [
        _spawn_worker(
            argv, i, jobs, ["--train.progress", "false"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1
        )
        for i in range(jobs)
    ]

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"[w{i}] {line}", end="", flush=True)

    threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    for t in threads:
        t.join()
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        print(
            f"error: worker {failed[0][0]} exited with code {failed[0][1]}; rerun the command to resume",
            file=sys.stderr,
        )
        raise SystemExit(failed[0][1])


def _die_with_parent() -> None:
    """In a worker: receive SIGTERM when the command that started it dies (Linux prctl; elsewhere
    nothing), and exit at once if it has died already."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        raise SystemExit(1)


def _report(result, out: Path) -> None:
    print(
        f"trained {len(result.trained)} run(s), kept {len(result.skipped)} finished run(s)"
        + (f", {len(result.busy)} busy in other processes" if result.busy else "")
    )
    statuses: dict[str, int] = {}
    for r in result.rows:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    print(
        f"results: {out / 'results.csv'} ({len(result.rows)} rows: "
        + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
        + ")"
    )
    if result.ignored:
        print(
            f"ignored {len(result.ignored)} run(s) in {out / 'runs'} that are not runs of this plan (another spec "
            f"or config shared --out): {', '.join(result.ignored)}"
        )
    for line in result.blocked:
        print(f"cooldown branch not trained: {line}")
    if result.pending:
        print(
            f"{len(result.pending)} planned run(s) not finished yet (other shards?); the fit and plots are "
            f"written when the last one finishes"
        )
    elif result.fit_path is not None:
        print(f"fit: {result.fit_path}; plots: {out / 'plots'}")
        for line in _verdicts(result):
            print(line)


def _verdicts(result) -> list[str]:
    """The verdict line(s) of the sweep's fit: of the fit written now, else of fit.json."""
    from scaling import sweep

    if result.fit is not None:
        return sweep.verdict_lines(result.fit.output)
    fit = json.loads(result.fit_path.read_text())
    groups = fit.get("groups") or {None: fit}
    lines = []
    for key, g in groups.items():
        diag = g.get("diagnostics")
        text = diag["verdict"] if diag else "FAIL: no diagnostics in fit.json"
        lines.append(f"verdict{'' if key is None else f' (arm = {key})'}: {text}")
    return lines


if __name__ == "__main__":
    main()
