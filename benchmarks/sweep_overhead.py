"""Where a sweep's wall time goes: the share spent outside training steps (compilation,
evaluation, checkpoints, data, fit and plots, the rest), measured in one process.

    python benchmarks/sweep_overhead.py [--config experiments/configs/bench-smoke.yaml] [--warm-cache]

The default sweep, bench-smoke, is the smoke sweep's design (2 budgets x 3 sizes) at budgets
where training takes a couple of minutes on 2 CPU cores; ``--config
experiments/configs/smoke.yaml`` measures the smoke sweep itself, whose runs train for
fractions of a second each, so that per-shape compilation dominates it whatever is done.

Runs the sweep in this process into a temporary directory (with a fresh, empty JAX
compilation cache unless --warm-cache, as on a fresh clone), one run at a time (``execute``
with a one-run shard, so results.csv, the log and, after the last run, the fit and plots are
all part of it; the calls share one ``trainers`` dict, as one sweep process's runs do, so a
shape compiles once), and right after each run times in isolation, under the same machine load: a
training step on a ready device batch (x the run's steps = the training steps' share), one
evaluation (x the run's evaluations), one checkpoint save (x its saves) and the host-side
batch assembly (x its steps). Compilation is the runs' own ``compile_s`` (summary.json; the
train step only: evaluation and init compile fall in "other"). Prints each part as a share
of the sweep's wall time; "other" is the remainder (it absorbs timing noise too).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def _time(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def isolated_costs(run_cfg, steps: int, run_dir: Path, trainers: dict) -> dict:
    """Seconds per step, per evaluation, per checkpoint save and per batch assembly of one run."""
    import jax

    from scaling import sharding as sh
    from scaling.checkpoint import Checkpointer
    from scaling.train import Run

    run = Run(run_cfg, run_dir, trainers=trainers)  # a scratch directory: nothing of the sweep is touched
    trainer = run.trainer()  # the sweep's compiled functions (nothing compiles here)
    state = trainer.init_state()
    lo, hi = run.rows
    batch = sh.make_global_batch(run.mesh, run.batches.train_batch(0, lo, hi), run.cfg.train.batch_size)
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    n, t0 = 0, time.perf_counter()
    while n < min(steps, 1000) and (n < 20 or time.perf_counter() - t0 < 2.0):
        state, m = trainer.train_step(state, batch)
        n += 1
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / n
    run.evaluate(trainer, state.params)  # compiles the evaluation
    eval_s = _time(lambda: run.evaluate(trainer, state.params), 2)
    data_s = _time(lambda: jax.block_until_ready(sh.make_global_batch(
        run.mesh, run.batches.train_batch(7, lo, hi), run.cfg.train.batch_size)), 20)
    with tempfile.TemporaryDirectory() as tmp:
        # what a save costs the training loop: the whole save when synchronous; with async
        # saves only the blocking part (copy to host, start the writer); the background
        # writing competes with the loop for the CPU and shows up in "other")
        ck = Checkpointer(Path(tmp) / "ck", run.cfg.checkpoint)
        ckpt_s = 0.0
        for i in range(1, 4):
            t0 = time.perf_counter()
            ck.save(i, state, {"benchmark": True})
            ckpt_s += (time.perf_counter() - t0) / 3
            ck.wait()
        ck.close()
    run.ckpt.close()
    return {"step_s": step_s, "eval_s": eval_s, "data_s": data_s, "ckpt_s": ckpt_s}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "configs" / "bench-smoke.yaml"))
    p.add_argument("--warm-cache", action="store_true",
                   help="use the usual compilation cache (else a fresh empty one, as on a fresh clone)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    if not args.warm_cache:
        os.environ["SCALING_COMPILE_CACHE"] = str(tmp / "jax-compile")

    import json

    from scaling import compile_cache, sweep

    compile_cache.enable()
    plan = sweep.make_plan(sweep.load_spec(args.config), {"train": {"progress": "false"}})
    out = tmp / "sweep"
    parts = {"train steps": 0.0, "compile (train step)": 0.0, "evaluation": 0.0, "checkpoints": 0.0,
             "data (batch assembly)": 0.0}
    per_run = []
    wall = 0.0
    trainers: dict = {}  # as one sweep process: runs of a shape share compiled functions
    for r in plan.runs:
        t0 = time.perf_counter()
        sweep.execute(plan, out, shard=(r.index, len(plan.runs)), progress=False, echo=lambda *a: None,
                      trainers=trainers)
        wall += time.perf_counter() - t0
        summary = json.loads((out / "runs" / r.run_id / "summary.json").read_text())
        c = isolated_costs(r.cfg, r.steps, tmp / "scratch" / r.run_id, trainers)
        every, ev = r.cfg.checkpoint.every_steps, r.cfg.train.eval_every
        # periodic saves (none in the last quarter-interval before the end: Checkpointer.due) + the final one
        n_ckpt = 1 + (sum(1 for s in range(every, r.steps, every) if r.steps - s >= every // 4) if every else 0)
        n_eval = r.steps // ev + (1 if r.steps % ev else 0)
        parts["train steps"] += r.steps * c["step_s"]
        parts["compile (train step)"] += summary["compile_s"]
        parts["evaluation"] += n_eval * c["eval_s"]
        parts["checkpoints"] += n_ckpt * c["ckpt_s"]
        parts["data (batch assembly)"] += r.steps * c["data_s"]
        per_run.append((r.run_id, summary["wall_s"], r.steps * c["step_s"], summary["compile_s"]))
    t0 = time.perf_counter()
    sweep.finalize(plan, out, echo=lambda *a: None, force=True)
    parts["fit and plots"] = time.perf_counter() - t0  # (already inside the last run's wall time)
    parts["other (run set-up, init/eval compile, logging, results)"] = wall - sum(parts.values())

    print(f"sweep {plan.spec.name}: {len(plan.runs)} runs, wall {wall:.1f}s "
          f"({'warm' if args.warm_cache else 'fresh'} compilation cache)")
    print(f"  {'run':<26} {'wall_s':>8} {'steps_s':>8} {'compile_s':>9}  steps' share")
    for rid, w, s, c in per_run:
        print(f"  {rid:<26} {w:8.2f} {s:8.2f} {c:9.2f}  {s / w:6.1%}")
    outside = 1 - parts["train steps"] / wall
    print(f"share of the sweep's wall time outside training steps: {outside:.1%} "
          f"({(wall - parts['train steps']) / len(plan.runs):.2f}s per run)")
    for k, v in parts.items():
        print(f"  {k:<55} {v:8.2f}s  {v / wall:6.1%}")
    return {"wall_s": wall, "outside_share": outside, **{k: v / wall for k, v in parts.items()}}


if __name__ == "__main__":
    main()
