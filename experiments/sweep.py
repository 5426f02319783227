"""Plan and run a sweep of training runs over model size N and tokens D:

    python -m experiments.sweep [--config FILE] [--out DIR] [--dry-run [--calibrate]] [--shard I/N]
        [--retry-diverged] [--seeds LIST] [--isoflop.budgets LIST ...] [--section.field VALUE ...]

With no arguments it runs experiments/configs/default.yaml (an IsoFLOP design on the
Gutenberg corpus, byte tokens) into runs/sweep-default. The spec format, the sizing rule for
target parameter counts and the directory layout are documented in scaling/sweep/__init__.py.
Overrides --section.field VALUE of a config section (model, data, optim, train, ...) apply to
the base train config of every run; those of a spec section (isoflop, grid, noise, lr_scan,
lr_rule, per_size, sizing, fit) and --seeds replace the spec file's values, for example a small
sweep from the command line:

    python -m experiments.sweep --config experiments/configs/smoke.yaml \\
        --isoflop.budgets 5e9,1e10 --isoflop.models L1-d16,L2-d32,L3-d48 --seeds 0,1

--dry-run prints the plan with a wall-time estimate at once and compiles nothing: the
estimate of an earlier --dry-run --calibrate of the same shapes on this machine (kept in
$SCALING_CACHE_DIR/sweep-calibration), else a rough one from FLOPs, labelled uncalibrated.
--dry-run --calibrate times a few real steps of the smallest and the largest shape first.

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
has finished. Killing the command stops its workers; a rerun resumes. Since each worker
compiles every shape it trains again, auto keeps a plan whose estimated training is short
beside that compiling in one process (the smoke sweep is such a plan).

JAX's persistent compilation cache ($SCALING_CACHE_DIR/jax-compile; SCALING_COMPILE_CACHE=off
turns it off) keeps runs that compile the same program from compiling again.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from scaling import config_parse, host_memory
from scaling.errors import ArgumentParser, UsageError, check_out_dir, exit_on_usage_error
from scaling.machine import usable_cpus
from scaling.sweep.parse import MODEL_LISTS, NUMBER_LISTS, SEED_LISTS, SPEC_FLAGS, parse_flag

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.yaml"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --isoflop.budget is a typo, not --isoflop.budgets
    )
    p.add_argument(
        "--config", default=None, help=f"sweep spec (YAML); default {DEFAULT_CONFIG.relative_to(CONFIGS.parent.parent)}"
    )
    p.add_argument(
        "--out",
        default=None,
        help="sweep directory (default: runs/sweep-<spec name>, relative to cwd; with spec flags "
        "runs/sweep-<spec name>-<8 hex digits of the flags>)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the planned runs with wall-time estimates and train nothing (nothing compiles): the "
        "estimates of an earlier --calibrate of these shapes on this machine, else a rough one from FLOPs, "
        "labelled uncalibrated",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="with --dry-run: time a few real steps of the smallest and the largest shape on this machine (with "
        "--jobs J in each worker, as they would train), print the estimate and keep it for later dry runs",
    )
    p.add_argument("--no-calibration", action="store_true", help=argparse.SUPPRESS)  # what --dry-run does now
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
        "(auto: one per core, at most one per family of runs; 1 for a plan whose estimated training "
        "is short beside compiling its shapes, elsewhere, with --shard and with several JAX processes)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker: train only
    p.add_argument("--estimates-out", default=None, help=argparse.SUPPRESS)  # a --jobs worker's --calibrate
    add_spec_arguments(p)
    config_parse.add_config_arguments(p)
    return p


SPEC_HELP = {
    "seeds": "the seeds every run is trained with, e.g. 0,1",
    "isoflop.budgets": "the FLOP budgets (6ND), e.g. 1e12,3e12; an isoflop design in place of a grid",
    "isoflop.models": "the model sizes of every budget: counts (1e5, 100K) or shapes (L2-d32, L2-d32-h4)",
    "isoflop.min_steps": "runs of fewer steps are left out of the plan",
    "isoflop.min_tokens_per_param": "runs with D / N below it are left out of the plan",
    "isoflop.max_tokens_per_param": "runs with D / N above it are left out of the plan (0: none)",
    "grid.models": "the model sizes: counts (1e5, 100K) or shapes (L2-d32, L2-d32-h4); a grid in place of an isoflop",
    "grid.tokens": "the token budgets D, e.g. 1e6,4e6",
    "noise.seeds": "the extra seeds of the smallest sizes at the smallest budgets, e.g. 7",
    "noise.models": "how many of the smallest sizes train the noise seeds",
    "noise.budgets": "at how many of the smallest budgets",
    "lr_scan.lrs": "the peak learning rates of the pilot scan, e.g. 2e-3,4e-3,8e-3",
    "lr_scan.models": "the scanned sizes: a number of sizes (2) or a list of models",
    "lr_scan.flops": "the FLOP budget of each scan run",
    "lr_rule.c": "a fixed rule lr = c (N / n_ref)^-gamma in place of a scan: c",
    "lr_rule.gamma": "the rule's exponent gamma",
    "lr_rule.n_ref": "the rule's reference size n_ref",
    "per_size.warmup_tokens_per_param": "warmup of this many tokens per parameter ...",
    "per_size.warmup_max_fraction": "... at most this fraction of the size's shortest run",
    "per_size.init_scale": "model.init_std = init_scale / sqrt(d_model)",
    "sizing.aspect": "d_model / n_layer of the sizing rule",
    "sizing.head_dim": "n_head = d_model / head_dim",
    "sizing.count": "the count a target matches: total | nonembed",
    "sizing.max_layers": "the deepest model the sizing rule tries",
    "fit.enabled": "true | false: fit the law when the sweep ends",
    "fit.loss": "the loss fitted: val_loss | final_train_loss | val_bpb",
    "fit.count": "the N of the law: total | nonembed",
    "fit.bootstrap": "approach 3's bootstrap resamples",
}


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """One ``--section.field`` option per settable value of the sweep spec (scaling.sweep.parse.SPEC_FLAGS)
    and ``--seeds``; they replace the spec file's values before the spec is checked."""
    g = p.add_argument_group(
        "sweep spec",
        "values in place of the spec file's, checked as the file is (docs/sweeps.md); lists are\n"
        "comma-separated; a flag of isoflop or grid (lr_scan or lr_rule) replaces the other section",
    )
    for flag in ("seeds", *(f"{sec}.{key}" for sec, keys in SPEC_FLAGS.items() for key in keys)):
        g.add_argument(
            f"--{flag}",
            dest="spec:" + flag.replace(".", ":"),
            default=None,
            metavar="LIST" if flag in (*SEED_LISTS, *NUMBER_LISTS, *MODEL_LISTS) else "VALUE",
            help=SPEC_HELP[flag],
        )


def spec_flags(args: argparse.Namespace) -> tuple[dict, str]:
    """The spec flags given: their parsed values by name, and the flags as they were typed."""
    given = {k[5:].replace(":", "."): v for k, v in vars(args).items() if k.startswith("spec:") and v is not None}
    parsed = {flag: parse_flag(flag, text) for flag, text in given.items()}
    return parsed, " ".join(f"--{flag} {text}" for flag, text in given.items())


@exit_on_usage_error
def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    host_memory.apply()  # before any computation: steps reuse freed host memory
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.calibrate and not args.dry_run:
        raise UsageError("--calibrate goes with --dry-run (it times a few steps and prints the estimate)")
    from scaling import sweep

    spec = sweep.load_spec(args.config or DEFAULT_CONFIG, *spec_flags(args))
    jobs = _parse_jobs(args.jobs)
    if args.worker:  # trains its shard quietly; the command that started it fits and plots
        _die_with_parent()
        spec = dataclasses.replace(spec, fit=False)
    shard = sweep.parse_shard(args.shard)
    overrides = config_parse.overrides_from_args(args)
    out = check_out_dir(_default_out(spec) if args.out is None else args.out, "--out")
    base = config_parse.from_dict(config_parse.merge(spec.base, overrides))  # fail fast on bad overrides
    may_fork = not args.worker and args.shard is None and base.dist.num_processes == 1
    with BackendProbe(may_fork and jobs == 0 and not args.dry_run and usable_cpus() > 1) as probe:
        from scaling import compile_cache
        from scaling.train import setup_distributed  # jax is imported only after the spec is valid

        if not args.dry_run or args.calibrate:  # a plain dry run compiles nothing
            compile_cache.enable()
        setup_distributed(base)
        plan = sweep.make_plan(spec, overrides)  # with lr_scan, its lr is provisional until the scan is fitted
        scan = sweep.plan_scan(spec, overrides, plan) if spec.lr_scan else None
        if scan is None:  # with a scan, scaling.sweep.pilot checks both plans' outputs
            sweep.check_outputs(plan, out)
        runs = plan.shard(*shard)
        scan_runs = () if scan is None else scan.shard(*shard)
        import jax

        if may_fork:
            families = len({r.family for r in plan.runs}) + (0 if scan is None else len(scan.runs))
            if jobs == 0:
                if usable_cpus() < 2 or families < 2:
                    jobs = 1
                else:
                    # a dry run starts no workers: its own backend (started by the plan's checks) says
                    cpu = jax.default_backend() == "cpu" if args.dry_run else probe.is_cpu()
                    payoff = (
                        sweep.worker_payoff((*(() if scan is None else scan.runs), *plan.runs), "cpu") if cpu else None
                    )
                    jobs = usable_cpus() if payoff is not None and payoff.pays_off else 1
                    if payoff is not None and not payoff.pays_off and jax.process_index() == 0:
                        print(payoff.one_process_note(), file=sys.stderr)
            jobs = min(jobs, families)
        else:
            jobs = 1
    is_main = jax.process_index() == 0
    if is_main and not args.worker:
        print(
            "# base config of every run (the plan sets model.n_layer, d_model, n_head, train.tokens, "
            "train.seed)\n" + plan.base.to_yaml(),
            file=sys.stderr,
        )
    if args.dry_run:
        estimates, notes, calibrated = _estimates(args, argv, plan, scan, shard, jobs)
        if args.estimates_out:
            return plan
        if is_main:
            if scan is not None:
                print(
                    f"# first, the learning-rate scan (into {out / 'lr_scan'}):\n"
                    + sweep.format_plan(scan, scan_runs, estimates, shard, workers=jobs)
                    + "\n# then the sweep:"
                )
            print(sweep.format_plan(plan, runs, estimates, shard, workers=jobs))
            print(_platform())
            for line in notes:
                print(line)
            if spec.fit:
                fit_s = sweep.fit_seconds(len(plan.runs), spec.fit_bootstrap, timed=args.calibrate)
                train_s = sum(
                    sweep.shard_wall(p, rs, estimates, jobs)
                    for p, rs in ((scan, scan_runs), (plan, runs))
                    if p is not None
                )
                print(
                    f"fit, diagnostics and plots: est. {sweep.format_duration(fit_s)}; the whole sweep: est. "
                    f"{sweep.format_duration(train_s + fit_s)}"
                    + (f" with {jobs} workers" if jobs > 1 else "")
                    + ("" if calibrated else " (uncalibrated)")
                )
        return plan
    if is_main and not args.worker:
        if scan is not None:
            print(sweep.format_plan(scan, scan_runs, None, shard), flush=True)
        print(sweep.format_plan(plan, runs, None, shard), flush=True)
        print(_platform(), flush=True)
        print(f"sweep directory: {out}", flush=True)
    if jobs > 1:
        _run_workers(argv, jobs)
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


def _default_out(spec) -> Path:
    """runs/sweep-<name>, or for a spec changed by flags runs/sweep-<name>-<hash of the flags>: a
    variant never writes its fit into the spec's own sweep directory."""
    tail = f"-{hashlib.sha256(spec.flags.encode()).hexdigest()[:8]}" if spec.flags else ""
    return Path("runs") / f"sweep-{spec.name}{tail}"


def _platform() -> str:
    """The line naming what JAX runs on (a CPU when an accelerator's JAX build is missing)."""
    import jax

    devices = jax.devices()
    return (
        f"platform: {jax.default_backend()}, {len(devices)} device(s) ({devices[0].device_kind})"
        + (f" over {jax.process_count()} processes" if jax.process_count() > 1 else "")
        + f", jax {jax.__version__}"
    )


def _parse_jobs(text: str) -> int:
    """--jobs: a positive integer, or auto (0 here: decided once the plan is known)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--jobs expects a positive integer or auto, got {text!r}")
    return int(text)


class BackendProbe:
    """Whether JAX would run on the CPU, asked in a child process (initialising an accelerator
    here would hold its memory away from the workers). The child starts on entering (when
    ``wanted``), so that it imports JAX while this process makes the plan; leaving ends it."""

    def __init__(self, wanted: bool):
        self.wanted, self.proc = wanted, None

    def __enter__(self) -> BackendProbe:
        if self.wanted:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import jax; print(jax.default_backend())"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def is_cpu(self) -> bool:
        if self.proc is None:
            raise RuntimeError("the backend probe was not started")
        try:
            out, _ = self.proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            return False
        return self.proc.returncode == 0 and out.strip().splitlines()[-1:] == ["cpu"]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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


def _estimates(args, argv: list[str], plan, scan, shard: tuple[int, int], jobs: int) -> tuple[dict, list[str], bool]:
    """--dry-run's seconds per run_id as ``jobs`` processes would train them (each a shard of the
    plan), the lines that say where they come from, and whether they are calibrated: timed now
    (--calibrate; in the workers themselves with jobs > 1), cached by an earlier --calibrate of the
    same shapes on this machine, or else a rough estimate from FLOPs."""
    import jax

    from scaling import sweep

    shards = [shard] if jobs == 1 else [(i, jobs) for i in range(jobs)]
    parts = [(*(() if scan is None else scan.shard(*sh)), *plan.shard(*sh)) for sh in shards]  # as trained
    if args.calibrate and jobs > 1:
        calibs = _calibrate_in_workers(argv, jobs)
    elif args.calibrate:
        calibs = [sweep.calibrate(parts[0]) if parts[0] else None]
        if calibs[0] is not None:
            sweep.store_calibration(parts[0], calibs[0])
    else:
        flags = None if jobs == 1 else _worker_env()["XLA_FLAGS"]
        calibs = [sweep.cached_calibration(runs, flags) if runs else None for runs in parts]
        if any(c is None for c, runs in zip(calibs, parts) if runs):
            calibs = [sweep.rough_calibration(runs, jax.default_backend()) if runs else None for runs in parts]
    if args.estimates_out:  # a worker of _calibrate_in_workers
        Path(args.estimates_out).write_text(json.dumps(calibs[0].to_json() if calibs[0] else None))
    estimates: dict[str, float] = {}
    for c, runs in zip(calibs, parts):
        estimates.update(c.estimate_runs(runs) if c is not None else {})
    known = [(i, c) for i, c in enumerate(calibs) if c is not None]
    if not known or known[0][1].source == "rough":
        return estimates, [c.describe() for _, c in known[:1]], False
    return estimates, [c.describe() if jobs == 1 else f"worker {i}: {c.describe()}" for i, c in known], True


def _calibrate_in_workers(argv: list[str], jobs: int) -> list:
    """--dry-run --calibrate with workers: each worker calibrates its shard's shapes at once, one
    XLA thread each (as they train), and keeps its calibration in the cache; theirs, in order."""
    from scaling import sweep

    with tempfile.TemporaryDirectory(prefix="sweep-estimates-") as tmp:
        paths = [Path(tmp) / f"{i}.json" for i in range(jobs)]
        procs = [
            _spawn_worker(
                argv, i, jobs, ["--estimates-out", str(paths[i])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for i in range(jobs)
        ]
        errors = [p.communicate()[1] for p in procs]
        calibs = []
        for i, (p, path) in enumerate(zip(procs, paths)):
            if p.returncode != 0 or not path.is_file():
                raise UsageError(f"calibration worker {i} failed: {(errors[i].strip().splitlines() or ['?'])[-1]}")
            d = json.loads(path.read_text())
            calibs.append(None if d is None else sweep.Calibration.from_json(d, source="calibrated"))
    return calibs


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
