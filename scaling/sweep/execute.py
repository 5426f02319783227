"""The sweep's runner: train a shard's planned runs one after another (resuming, sharing compiled
programs between runs of one shape), keep results.csv current, and fit when the plan is done.

A cooldown branch (:mod:`scaling.sweep.families`) starts from its parent's kept checkpoint;
when that checkpoint is missing (the parent not trained yet, or deleted) the branch is
reported (``SweepResult.blocked``) and left untrained, never retrained from scratch."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from scaling.data import load_tokens
from scaling.io import LockHeld, atomic_write_text
from scaling.run_dir import run_status
from scaling.sweep.fit import Plotter, SweepFit, finalize
from scaling.sweep.plan import Plan, PlannedRun
from scaling.sweep.results import ignored_runs, log_event, rebuild_results
from scaling.sweep.show import format_duration

__all__ = ["SweepResult", "execute"]


@dataclass
class SweepResult:
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished before (kept)
    busy: list[str] = field(default_factory=list)  # being trained by another process
    blocked: list[str] = field(default_factory=list)  # branches whose parent checkpoint cannot be read (why)
    pending: list[str] = field(default_factory=list)  # planned runs without a summary at the end
    ignored: list[str] = field(default_factory=list)  # run directories of another plan (not in the results)
    fit: SweepFit | None = None  # the fit this call wrote
    fit_path: Path | None = None  # fit.json, when it describes every planned run (written now or before)
    rows: list[dict] = field(default_factory=list)


def _run_state(run_dir: Path) -> str | None:
    return run_status(run_dir)


def execute(
    plan: Plan,
    out: Path,
    *,
    shard: tuple[int, int] = (0, 1),
    retry_diverged: bool = False,
    progress: bool | None = None,
    echo=print,
    trainers: dict | None = None,
    after_run=None,
    plot: Plotter | None = None,
    compile_ahead: bool = True,
) -> SweepResult:
    """Train this shard's runs one after another (resuming), rebuilding results.csv after each;
    when every planned run has finished, fit (and plot with ``plot``: :func:`finalize`).
    ``echo`` prints progress lines. Runs of one shape share compiled functions through
    ``trainers`` (a fresh dict by default; pass the same dict to several calls to share across
    them); with ``compile_ahead`` later shapes compile on background threads while earlier
    runs train. ``after_run(run)``, if given, is called after each run this call trains."""
    import jax  # the training stack loads here, when a sweep runs (see scaling.sweep)

    from scaling.difficulty import MODEL_SCORING
    from scaling.errors import UsageError
    from scaling.train import Run
    from scaling.train.progress import platform_line
    from scaling.train.trackers import SweepGroup

    out = Path(out)
    is_main = jax.process_index() == 0
    single = jax.process_count() == 1
    progress = plan.base.train.progress if progress is None else progress
    mine = plan.shard(*shard)
    res = SweepResult()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "plan.json",
            json.dumps(
                {"spec": plan.spec.path, "name": plan.spec.name, "runs": [r.to_json() for r in plan.runs]}, indent=1
            ),
        )
        rebuild_results(out, plan)

    def finished(r: PlannedRun) -> bool:
        st = _run_state(out / "runs" / r.run_id)
        return st == "completed" or (st == "diverged" and not retry_diverged)

    done_flops = sum(r.train_flops for r in mine if finished(r))
    n_done = sum(finished(r) for r in mine)
    bar = tqdm(
        total=sum(r.train_flops for r in mine),
        initial=done_flops,
        unit="FLOP",
        unit_scale=True,
        desc=f"sweep {plan.spec.name}",
        position=0,
        leave=True,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not (progress and is_main),
        smoothing=0.0,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOPs [{elapsed}<{remaining}{postfix}]",
    )
    bar.set_postfix_str(f"runs {n_done}/{len(mine)}")
    if progress and is_main:
        bar.write(platform_line(), file=sys.stderr)
    trainers = {} if trainers is None else trainers  # one Trainer per shape, shared by its runs
    splits: dict = {}  # DataConfig -> TokenSplits: the corpus read and hashed once for all the runs
    # one compile thread per 4 cores (an XLA compile keeps more than one busy), at least 1
    ahead = concurrent.futures.ThreadPoolExecutor(
        max(1, (os.cpu_count() or 1) // 4), thread_name_prefix="compile-ahead"
    )
    try:
        if compile_ahead:
            _compile_ahead([r for r in mine if not finished(r)], trainers, ahead)
        for r in mine:
            run_dir = out / "runs" / r.run_id
            if finished(r):
                res.skipped.append(r.run_id)
                continue
            branch = None if r.parent is None else (out / "runs" / r.parent, r.stable_steps)
            try:  # the Run holds the run directory's lock (process 0) until it ends
                if r.cfg.data not in splits:
                    splits[r.cfg.data] = load_tokens(r.cfg.data)
                run = Run(
                    r.cfg,
                    run_dir,
                    trainers=trainers,
                    model_scoring=MODEL_SCORING,
                    branch_from=branch,
                    keep_steps=r.keep_steps,
                    sweep=SweepGroup(out, plan.spec.name),
                    splits=splits[r.cfg.data],
                )
            except LockHeld:
                if not single:  # the other processes would wait for this one in the collectives
                    raise
                res.busy.append(r.run_id)
                bar.write(f"[{r.index}] {r.run_id}: being trained by another process; skipped")
                continue
            except UsageError as e:
                if branch is None or not single:
                    raise
                res.blocked.append(f"{r.run_id}: {e}")
                bar.write(
                    f"[{r.index}] {r.run_id}: cooldown branch not started, its parent's checkpoint cannot be read ({e})"
                )
                continue
            with run:
                if finished(r):  # finished by another process meanwhile
                    res.skipped.append(r.run_id)
                    continue
                _train_one(plan, r, run, out, is_main, bar)
                res.trained.append(r.run_id)
            if after_run is not None:
                after_run(r)
            n_done += 1
            bar.update(r.train_flops)
            bar.set_postfix_str(f"runs {n_done}/{len(mine)}")
            if is_main:
                rebuild_results(out, plan)
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        bar.close()
    if is_main:
        res.rows = rebuild_results(out, plan)
        res.ignored = ignored_runs(out, plan)
        res.pending = [r.run_id for r in plan.runs if _run_state(out / "runs" / r.run_id) is None]
        if plan.spec.fit and not res.pending:
            res.fit = finalize(plan, out, plot=plot, echo=echo)
            res.fit_path = out / "fit.json"
    return res


def _compile_ahead(runs: list[PlannedRun], trainers: dict, pool) -> None:
    """Queue the compilation of every shape ``runs`` train on ``pool``, in the order the runs
    need them, so that later shapes compile while earlier runs train (a Trainer per shape goes
    into ``trainers``, where the runs find it)."""
    import jax

    from scaling import sharding as sh
    from scaling.train import Trainer

    def build(key, cfg, mesh, steps):
        trainer = trainers.get(key)
        if trainer is None:
            trainer = trainers.setdefault(key, Trainer(cfg, mesh, steps))
        trainer.compile_all()

    queued = set()
    for r in runs:
        mesh = sh.make_mesh(sh.mesh_shape(r.cfg.mesh, jax.device_count()))
        key = Trainer.program_key(r.cfg, mesh)
        if key not in queued:
            queued.add(key)
            pool.submit(build, key, r.cfg, mesh, r.steps)


def _train_one(plan: Plan, r: PlannedRun, run, out: Path, is_main: bool, bar) -> dict:
    """Train planned run ``r`` with ``run`` (a Run into its directory, holding the lock)."""
    run_dir = run.out
    if is_main:
        atomic_write_text(run_dir / "plan.json", json.dumps({**r.to_json(), "sweep": plan.spec.name}, indent=1))
        old = run_dir / "summary.json"
        if old.is_file():  # a diverged run being retried: keep its summary aside
            os.replace(old, run_dir / "summary.diverged.json")
    ckpts = run.ckpt.steps()
    start = ckpts[-1] if ckpts else (r.stable_steps or 0)
    if is_main:
        log_event(out, event="start", run_id=r.run_id, start_step=start, steps=r.steps, parent=r.parent)
        what = (
            f"resuming at step {start}"
            if ckpts
            else f"branching from {r.parent} at step {start}"
            if r.parent
            else "starting"
        )
        bar.write(
            f"[{r.index}] {r.run_id}: {what} (N={r.n_params:,}, D={r.tokens:,}, C={r.flops['6nd']:.3g}, "
            f"{r.steps} steps)"
        )
    summary = run.run()
    if is_main:
        log_event(out, event="end", run_id=r.run_id, status=summary["status"], steps_done=summary.get("steps_done"))
        vl = summary.get("val_loss")
        bar.write(
            f"[{r.index}] {r.run_id}: {summary['status']}, val_loss "
            f"{'-' if vl is None else format(vl, '.4f')}, {format_duration(summary['wall_s'])}"
        )
    return summary
