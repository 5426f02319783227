"""Sweeps over model size N and tokens D: the runner, and the one import for the rest.

The spec is parsed in ``scaling.sweep_spec``, the plan (sizing rule, runs, printing) made in
``scaling.sweep_plan``, its wall time estimated in ``scaling.sweep_calibrate``, the sweep
directory's files (log, results.csv) kept by ``scaling.sweep_results`` and the fit,
plots and report written by ``scaling.sweep_report``; their public names are re-exported
here, so ``from scaling import sweep`` reaches all of them.

A sweep spec is a YAML file (``experiments/configs/*.yaml``)::

    name: smoke                  # optional; the default --out is runs/sweep-<name> (default: the file's stem)
    description: ...             # optional, printed with the plan
    base:                        # the train config of every run (sections as in experiments.train --config),
      data: {corpus: gutenberg}  #   or a path to such a YAML file (relative to the spec)
      model: {seq_len: 128}
      train: {batch_size: 16}
    sizing:                      # how a target parameter count becomes a shape (defaults shown)
      aspect: 16                 #   d_model / n_layer
      head_dim: 16               #   n_head = d_model / head_dim
      count: total               #   the count matched to the target: total (n_params) | nonembed
      max_layers: 64
    isoflop:                     # EITHER an IsoFLOP design: FLOP budgets x model sizes, D = C / (6 N) ...
      budgets: [1e12, 3e12]      #   a number, or {flops: C, models: [...]} with its own model list
      models: [3e4, 1e5, 3e5]    #   (used by budgets without their own list)
      min_steps: 1               #   runs of fewer steps are left out of the plan (and listed)
    grid:                        # ... OR a grid: models x token budgets
      models: [{n_layer: 2, d_model: 64}, 1e5]
      tokens: [1e6, 4e6]
    seeds: [0, 1]                # optional (default: base train.seed); every run once per seed
    arms:                        # optional named config variants; every run once per arm
      - name: baseline           #   (adds an ``arm`` column and a ``-<arm>`` run-id suffix)
      - name: linear
        config: {data: {curriculum: linear}}
        tags: {pacing: linear}   #   extra results columns of this arm's runs
    tags: {project: demo}        # optional extra results columns of every run
    fit: true                    # false: no fit at the end; or {loss: val_loss}

A model is a *shape* ``{n_layer, d_model[, n_head]}`` (``n_head`` defaults to
``d_model / sizing.head_dim``) or a *target parameter count* (``1e5``, ``"100K"``, ``"1.5M"``).

Sizing rule (one rule, documented): for every depth ``n_layer = 1 .. max_layers`` take the
width ``d_model = head_dim * max(1, round(aspect * n_layer / head_dim))`` (the fixed
depth-to-width ratio, rounded to whole heads of ``head_dim``), ``n_head = d_model / head_dim``,
and keep the depth whose real parameter count (``count``: all parameters, the N of C = 6ND,
by default; or the non-embedding count) is closest to the target in log ratio (ties go to the
shallower model). Counts include the embedding of the configured vocabulary and context, so
the plan prints the real N next to the target.

Token budgets are whole batches: a grid's D is rounded to the nearest multiple of
``batch_size * seq_len`` (at least one batch), an IsoFLOP run's D = C / (6 N) with N the total
parameter count, rounded the same way; the ``budget`` column keeps the nominal C.

Overrides ``--section.field VALUE`` apply to the base config of every run (arms apply on top of
them); the fields the design sets (``model.n_layer``, ``model.d_model``, ``model.n_head``,
``train.tokens`` and, with ``seeds``, ``train.seed``) cannot be overridden.

Run ids are ``L<n_layer>-d<d_model>-D<tokens>-s<seed>`` (e.g. ``L4-d128-D2.0e6-s0``), with
``-h<n_head>`` when n_head is not the sizing default and ``-<arm>`` for arms.

Sweep directory::

    DIR/plan.json                 the whole plan (every run's shape, N, D, C, budget, seed, arm)
    DIR/runs/<run_id>/            experiments.train's outputs, plus plan.json (this run's plan entry);
                                  .lock is held while the run trains (by a sweep or experiments.train)
    DIR/results.csv               one row per finished run of the plan, rebuilt from runs/*/summary.json
    DIR/sweep_log.jsonl           one line per run start/end: run_id, start step, status, pid, host
    DIR/fit.json, DIR/plots/      when every planned run has finished
    DIR/locks/                    advisory lock of the results rebuild

Only the plan's runs count: results.csv, the fit and the plots leave out run directories of
another plan that shared the directory (a run id the plan does not have, or a run trained
with another config), and name them (``SweepResult.ignored``, ``sweep.ignored`` in fit.json).

Rerunning resumes: finished runs are kept (a diverged one is retried only with
``retry_diverged``: it resumes from its last good checkpoint), a partial run resumes from its
checkpoint. ``shard=(i, n)`` runs the plan's runs ``i, i+n, i+2n, ...``; a run being trained by
another process (its directory's lock held) is skipped, and the results table is rebuilt under
a lock from every run's summary.json, so concurrent shards never lose or duplicate a row. The
shard that finishes last (when every planned run has a summary) writes fit.json and the plots.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scaling.io import LockHeld, atomic_write_text, file_lock
from scaling.sweep_calibrate import Calibration, calibrate
from scaling.sweep_plan import (Plan, PlannedRun, check_outputs, count, fit_support, format_duration, format_plan,
                                format_tokens, make_plan, parse_shard, shape_for, shape_key)
from scaling.sweep_report import _results_digest, finalize, fit_report, fit_sweep, write_plots
from scaling.sweep_results import (RESULT_COLUMNS, VOLATILE_COLUMNS, _read_json, collect_rows, ignored_runs,
                                   log_event, read_log, rebuild_results, results_csv_text)
from scaling.sweep_spec import Arm, Budget, ModelSpec, Sizing, Spec, load_spec, parse_number

__all__ = [  # the re-exported names, and this module's own
    "Arm", "Budget", "Calibration", "ModelSpec", "Plan", "PlannedRun", "RESULT_COLUMNS", "Sizing", "Spec",
    "SweepResult", "VOLATILE_COLUMNS", "_results_digest", "calibrate", "check_outputs", "collect_rows", "count",
    "execute", "file_lock", "finalize", "fit_report", "fit_support", "fit_sweep", "format_duration", "format_plan",
    "format_tokens", "ignored_runs", "load_spec", "log_event", "make_plan", "parse_number", "parse_shard",
    "read_log", "rebuild_results", "results_csv_text", "shape_for", "shape_key", "write_plots",
]


# ----------------------------------------------------------------------------- the runner


@dataclass
class SweepResult:
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished before (kept)
    busy: list[str] = field(default_factory=list)  # being trained by another process
    pending: list[str] = field(default_factory=list)  # planned runs without a summary at the end
    ignored: list[str] = field(default_factory=list)  # run directories of another plan (not in the results)
    fit: dict | None = None
    rows: list[dict] = field(default_factory=list)


def _run_state(run_dir: Path) -> str | None:
    s = _read_json(run_dir / "summary.json")
    return None if s is None else s.get("status")


def execute(plan: Plan, out: Path, *, shard: tuple[int, int] = (0, 1), retry_diverged: bool = False,
            progress: bool | None = None, echo=print, trainers: dict | None = None,
            after_run=None) -> SweepResult:
    """Train this shard's runs one after another (resuming), rebuilding results.csv after each;
    when every planned run has finished, fit and plot. ``echo`` prints progress lines. Runs of
    one shape share compiled functions through ``trainers`` (a fresh dict by default; pass
    the same dict to several calls to share across them); later shapes compile on background
    threads while earlier runs train. ``after_run(run)``, if given, is called after each run
    this call trains (benchmarks/sweep_overhead.py times steps there)."""
    import jax
    from tqdm import tqdm

    from scaling.difficulty import MODEL_SCORING
    from scaling.train import Run

    out = Path(out)
    is_main = jax.process_index() == 0
    single = jax.process_count() == 1
    progress = plan.base.train.progress if progress is None else progress
    mine = plan.shard(*shard)
    res = SweepResult()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "plan.json", json.dumps({"spec": plan.spec.path, "name": plan.spec.name,
                                                         "runs": [r.to_json() for r in plan.runs]}, indent=1))
        rebuild_results(out, plan)

    def finished(r: PlannedRun) -> bool:
        st = _run_state(out / "runs" / r.run_id)
        return st == "completed" or (st == "diverged" and not retry_diverged)

    done_flops = sum(r.flops["6nd"] for r in mine if finished(r))
    n_done = sum(finished(r) for r in mine)
    bar = tqdm(total=sum(r.flops["6nd"] for r in mine), initial=done_flops, unit="FLOP", unit_scale=True,
               desc=f"sweep {plan.spec.name}", position=0, leave=True, dynamic_ncols=True, file=sys.stderr,
               disable=not (progress and is_main), smoothing=0.0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOPs "
                          "[{elapsed}<{remaining}{postfix}]")
    bar.set_postfix_str(f"runs {n_done}/{len(mine)}")
    trainers = {} if trainers is None else trainers  # one Trainer per shape, shared by its runs
    # one compile thread per 4 cores (an XLA compile keeps about 1.5 busy): 1 on a laptop
    ahead = concurrent.futures.ThreadPoolExecutor(max(1, (os.cpu_count() or 1) // 4),
                                                  thread_name_prefix="compile-ahead")
    try:
        _compile_ahead([r for r in mine if not finished(r)], trainers, ahead)
        for r in mine:
            run_dir = out / "runs" / r.run_id
            if finished(r):
                res.skipped.append(r.run_id)
                continue
            try:  # the Run holds the run directory's lock (process 0) until it ends
                run = Run(r.cfg, run_dir, trainers=trainers, model_scoring=MODEL_SCORING)
            except LockHeld:
                if not single:  # the other processes would wait for this one in the collectives
                    raise
                res.busy.append(r.run_id)
                bar.write(f"[{r.index}] {r.run_id}: being trained by another process; skipped")
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
            bar.update(r.flops["6nd"])
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
            res.fit = finalize(plan, out, echo=echo)
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
    start = ckpts[-1] if ckpts else 0
    if is_main:
        log_event(out, event="start", run_id=r.run_id, start_step=start, steps=r.steps)
        what = "resuming at step %d" % start if start else "starting"
        bar.write(f"[{r.index}] {r.run_id}: {what} (N={r.n_params:,}, D={r.tokens:,}, C={r.flops['6nd']:.3g}, "
                  f"{r.steps} steps)")
    summary = run.run()
    if is_main:
        log_event(out, event="end", run_id=r.run_id, status=summary["status"], steps_done=summary.get("steps_done"))
        vl = summary.get("val_loss")
        bar.write(f"[{r.index}] {r.run_id}: {summary['status']}, val_loss "
                  f"{'-' if vl is None else format(vl, '.4f')}, {format_duration(summary['wall_s'])}")
    return summary
