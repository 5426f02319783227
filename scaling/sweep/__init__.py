"""Sweeps over model size N and tokens D.

- :mod:`~scaling.sweep.spec`: the spec file parsed and checked
- :mod:`~scaling.sweep.parse`: the spec's values (numbers with SI suffixes, mappings, lists) read and checked,
  and given as command-line flags (``--isoflop.budgets 1e12,3e12``, ``--seeds 0,1``)
- :mod:`~scaling.sweep.noise`: the spec's ``noise:`` seeds and the extra runs they add
- :mod:`~scaling.sweep.plan`: the sizing rule, every run resolved to its config
- :mod:`~scaling.sweep.show`: the plan as printed
- :mod:`~scaling.sweep.families`: the cooldown families of a wsd sweep (a parent and its branches)
- :mod:`~scaling.sweep.calibrate`: the wall-time estimate (``--calibrate``'s timed steps, cached; or from FLOPs)
- :mod:`~scaling.sweep.execute`: the runner (train the plan's runs, resuming; then the fit)
- :mod:`~scaling.sweep.results`: the sweep directory's files (run log, results.csv)
- :mod:`~scaling.sweep.fit`: the end-of-run fit (:mod:`scaling.laws`), fit.json and its report
- :mod:`~scaling.sweep.hparams`: the per-size settings of every run (lr rule, warmup, init)
- :mod:`~scaling.sweep.pilot`: the learning-rate pilot scan, the rule fitted to it, the sweep run after it
- :mod:`~scaling.sweep.diagnose`: what that fit computes (approaches 1-3 with intervals, the other
  parameter count, the diagnostics and their verdict, the noise, the compute counts)
- :mod:`~scaling.sweep.baseline`: the count-model baseline on the runs' validation tokens

Their public names are re-exported here, so ``from scaling import sweep`` reaches all of
them (``sweep.execute`` and ``sweep.calibrate`` are the functions; their modules are
imported by their full names).  Importing the package starts no JAX: the runner imports the
training stack when it runs, so that a spec is read and checked first.

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
      min_tokens_per_param: 0    #   runs with D / N below it are left out too (0: none)
      max_tokens_per_param: 0    #   and those with D / N above it (0: none)
    grid:                        # ... OR a grid: models x token budgets
      models: [{n_layer: 2, d_model: 64}, 1e5]
      tokens: [1e6, 4e6]
    seeds: [0, 1]                # optional (default: base train.seed); every run once per seed
    noise: {seeds: [7], models: 2, budgets: 2}  # optional: these seeds again for the 2 smallest sizes
                                 #   at the 2 smallest budgets (the sweep's own seed noise)
    cooldown_branches: true      # with base optim.schedule wsd: runs that differ only in tokens form a
                                 #   family; the longest keeps checkpoints at the others' decay starts,
                                 #   and they branch from there (scaling.sweep.families)
    arms:                        # optional named config variants; every run once per arm
      - name: baseline           #   (adds an ``arm`` column and a ``-<arm>`` run-id suffix)
      - name: linear
        config: {data: {curriculum: linear}}
        tags: {pacing: linear}   #   extra results columns of this arm's runs
    tags: {project: demo}        # optional extra results columns of every run
    lr_scan:                     # optional: a pilot scan fits lr = c (N / n_ref)^-gamma first (scaling.sweep.pilot)
      lrs: [2e-3, 4e-3, 8e-3]    #   peak rates tried at each scanned size
      models: 2                  #   the smallest and largest size of the design (or k sizes, or a list)
      flops: 6e11                #   budget of each scan run (D = C / 6N)
    lr_rule: {c: 4e-3, gamma: 0.3, n_ref: 1e5}   # ... OR a fixed rule (no scan)
    per_size:                    # optional per-size warmup and init (scaling.sweep.hparams)
      warmup_tokens_per_param: 1 #   warmup N tokens ...
      warmup_max_fraction: 0.05  #   ... at most this fraction of the size's shortest run
      init_scale: 1.0            #   optional: model.init_std = init_scale / sqrt(d_model)
    fit: true                    # false: no fit at the end; or {loss: val_loss, count: total|nonembed,
                                 #   bootstrap: 40} (count: the N of the law, default sizing.count, the
                                 #   other count's fit reported beside it; bootstrap: approach 3's
                                 #   resamples, each about 0.6 s of one core from the full start grid)

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
    DIR/baseline.json             the count-model baseline of the runs' validation tokens (a cache)
    DIR/fit.json, DIR/plots/      when every planned run has finished (the plots drawn by the caller's
                                  ``plot``: experiments.sweep passes analysis.sweep_plots.plot_sweep)
    DIR/locks/                    advisory lock of the results rebuild
    DIR/lr_scan/                  with lr_scan: the pilot scan, a sweep directory of its own (no fit)
    DIR/lr_rule.json              with lr_scan or lr_rule: the rule lr(N), the scan's optima, the rates applied

Only the plan's runs count: results.csv, the fit and the plots leave out run directories of
another plan that shared the directory (a run id the plan does not have, or a run trained
with another config), and name them (``SweepResult.ignored``, ``sweep.ignored`` in fit.json).

Rerunning resumes: finished runs are kept (a diverged one is retried only with
``retry_diverged``: it resumes from its last good checkpoint), a partial run resumes from its
checkpoint. ``shard=(i, n)`` runs the plan's families ``i, i+n, i+2n, ...`` (a parent with its
cooldown branches, or a run alone); a run being trained by
another process (its directory's lock held) is skipped, and the results table is rebuilt under
a lock from every run's summary.json, so concurrent shards never lose or duplicate a row. The
shard that finishes last (when every planned run has a summary) writes fit.json and the plots.
"""

from scaling.sweep.parse import parse_number  # noqa: I001
from scaling.sweep.spec import Arm, Budget, ModelSpec, Sizing, Spec, load_spec
from scaling.sweep.results import (
    RESULT_COLUMNS,
    VOLATILE_COLUMNS,
    check_outputs,
    collect_rows,
    ignored_runs,
    log_event,
    read_log,
    rebuild_results,
    results_csv_text,
)
from scaling.sweep.plan import Plan, PlannedRun, count, fit_support, format_tokens, make_plan, parse_shard, shape_for
from scaling.sweep.show import format_duration, format_plan, shard_wall
from scaling.sweep.calibrate import (
    Calibration,
    cached_calibration,
    calibrate,
    fit_seconds,
    WorkerPayoff,
    rough_calibration,
    shape_key,
    store_calibration,
    worker_payoff,
)
from scaling.sweep.diagnose import SweepFitOptions
from scaling.sweep.fit import (
    Plotter,
    SweepFit,
    _results_digest,
    finalize,
    fit_report,
    fit_sweep,
    load_sweep_runs,
    verdict_lines,
)
from scaling.sweep.execute import SweepResult, _compile_ahead, execute
from scaling.sweep.hparams import LrApplied, LrOptimum, LrRule
from scaling.sweep.pilot import fit_rule, plan_scan, read_rule, record_rule, rule_report

__all__ = [  # with the two private names tests and benchmarks reach through the package
    "_compile_ahead",
    "_results_digest",
    "Arm",
    "Budget",
    "Calibration",
    "LrApplied",
    "LrOptimum",
    "LrRule",
    "ModelSpec",
    "Plan",
    "PlannedRun",
    "fit_rule",
    "plan_scan",
    "read_rule",
    "record_rule",
    "rule_report",
    "Plotter",
    "RESULT_COLUMNS",
    "Sizing",
    "Spec",
    "SweepFitOptions",
    "SweepFit",
    "SweepResult",
    "VOLATILE_COLUMNS",
    "cached_calibration",
    "calibrate",
    "check_outputs",
    "collect_rows",
    "count",
    "execute",
    "finalize",
    "fit_report",
    "fit_seconds",
    "fit_support",
    "fit_sweep",
    "format_duration",
    "format_plan",
    "format_tokens",
    "ignored_runs",
    "load_spec",
    "load_sweep_runs",
    "log_event",
    "make_plan",
    "parse_number",
    "parse_shard",
    "read_log",
    "rebuild_results",
    "results_csv_text",
    "rough_calibration",
    "shape_for",
    "shape_key",
    "shard_wall",
    "store_calibration",
    "verdict_lines",
    "worker_payoff",
    "WorkerPayoff",
]
