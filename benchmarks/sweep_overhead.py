"""Where a sweep's wall time goes: the share spent outside training steps (compilation,
evaluation, checkpoints, data, fit and plots, the rest), measured in one process.

    python benchmarks/sweep_overhead.py [--config experiments/configs/bench-smoke.yaml] [--warm-cache]
                                        [--no-compile-ahead] [--quick]
                                        [--out benchmarks/results/sweep_overhead_<backend>.json]

The default sweep, bench-smoke, is the smoke sweep's design (2 budgets x 3 sizes) at budgets
where training takes a couple of minutes on 2 CPU cores; ``--config
experiments/configs/smoke.yaml`` measures the smoke sweep itself, whose runs train for
fractions of a second each, so that per-shape compilation dominates it whatever is done.

Runs the whole sweep in this process, as ``python -m experiments.sweep`` does (``execute``:
results.csv, the log, compile-ahead of later shapes while earlier runs train, and after the
last run the fit and plots), into a temporary directory, with a fresh, empty JAX compilation
cache unless --warm-cache (as on a fresh clone). With the sweep's compiled functions
it times in isolation: a training step of each shape on a ready device batch, in the run's
loop (after every run that leaves no compile pending, two short windows of each shape, the
time taken out of the sweep's wall time; a shape's step time is the median of all its
windows; x each run's steps = the training steps' share), one evaluation (x the run's evaluations),
one checkpoint save (x its saves) and the host-side batch assembly (x its steps).
Compilation is the time the runs waited for their init and train step (``compile_s`` in
summary.json; compiles that overlap training are not waited for). Prints each part as a
share of the sweep's wall time; "other" is the remainder (run set-up, the evaluation and
FLOP-count compiles a run waited for, logging, training slowed by compiles running beside
it, and timing noise). ``--quick`` measures the smoke sweep (``experiments/configs/smoke.yaml``).
Writes JSON with the machine record.
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

from benchmarks.record import result_path, write_result  # noqa: E402
from scaling import host_memory  # noqa: E402


def _time(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


class StepTimer:
    """Seconds per training step of each shape, timed in the run's own loop (step t dispatched
    before step t-1's metrics are fetched) on a ready batch with the sweep's compiled step:
    after every run that leaves no compile pending, two short windows of each shape; a shape's
    step time is the median of all its windows, so that the machine's drift over the sweep
    touches the estimate as it touches the runs."""

    def __init__(self, plan, tmp: Path, trainers: dict, window_s: float = 0.25):
        self.plan, self.tmp, self.trainers, self.window_s = plan, tmp, trainers, window_s
        self.loops: dict = {}
        self.spent = 0.0  # seconds spent timing (taken out of the sweep's wall time)

    def _loop(self, r):
        from scaling import sharding as sh
        from scaling.train import Run

        run = Run(r.cfg, self.tmp / r.run_id, trainers=self.trainers)  # a scratch directory
        trainer = run.trainer()
        if trainer.key not in self.loops and trainer.step_compiled:
            batch = sh.make_global_batch(run.mesh, run.batches.train_batch(0, *run.rows), r.cfg.train.batch_size)
            self.loops[trainer.key] = {"trainer": trainer, "state": trainer.init_state(), "batch": batch, "windows": []}
        run.close()
        return trainer.key

    def _compiling(self) -> bool:
        """Whether a shape's programs are still to be compiled or compiling (ahead, on a thread
        that would go on during the timing, which is taken out of the wall time)."""
        from scaling.sweep import shape_key

        shapes = {shape_key(r) for r in self.plan.runs}
        return len(self.trainers) < len(shapes) or not all(
            f.done() for t in list(self.trainers.values()) for f in list(t._compiled.values())
        )

    def __call__(self, _run=None, *, last: bool = False) -> None:
        import jax

        if self._compiling() and not last:
            return  # time later: compiles must not get the timing's pause for free
        t_start = time.perf_counter()
        for r in self.plan.runs:
            self._loop(r)
        for lp in self.loops.values():
            for w in range(3):  # a warm-up window, then two timed ones
                n, prev, t0 = 0, None, time.perf_counter()
                while n < 5 or time.perf_counter() - t0 < self.window_s:
                    lp["state"], m = lp["trainer"].train_step(lp["state"], lp["batch"])
                    if prev is not None:
                        jax.device_get(prev)
                    prev, n = m, n + 1
                jax.device_get(prev)
                if w:
                    lp["windows"].append((time.perf_counter() - t0) / n)
        self.spent += time.perf_counter() - t_start

    def step_s(self, r) -> float:
        import numpy as np

        return float(np.median(self.loops[self._loop(r)]["windows"]))


def isolated_costs(run_cfg, run_dir: Path, trainers: dict) -> dict:
    """Seconds per evaluation, per checkpoint save and per batch assembly of one run, and its shape."""
    import jax

    from scaling import sharding as sh
    from scaling.checkpoint import Checkpointer
    from scaling.train import Run

    run = Run(run_cfg, run_dir, trainers=trainers)  # a scratch directory: nothing of the sweep is touched
    trainer = run.trainer()
    state = trainer.init_state()
    lo, hi = run.rows
    run.evaluate(trainer, state.params)  # warm-up
    eval_s = _time(lambda: run.evaluate(trainer, state.params), 2)

    def assemble():
        return jax.block_until_ready(
            sh.make_global_batch(run.mesh, run.batches.train_batch(7, lo, hi), run.cfg.train.batch_size)
        )

    assemble()  # the first batch of an epoch draws its permutation: once per run, not per step
    data_s = _time(assemble, 200)
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
    run.close()
    return {"key": trainer.key, "eval_s": eval_s, "data_s": data_s, "ckpt_s": ckpt_s}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "configs" / "bench-smoke.yaml"))
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the usual compilation cache (else a fresh empty one, as on a fresh clone)",
    )
    p.add_argument(
        "--no-compile-ahead",
        action="store_true",
        help="compile each program on the loop's thread when first needed (the A/B baseline)",
    )
    p.add_argument("--quick", action="store_true", help="the smoke sweep (--config experiments/configs/smoke.yaml)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/sweep_overhead_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    if args.quick:
        args.config = str(REPO / "experiments" / "configs" / "smoke.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    if not args.warm_cache:
        os.environ["SCALING_COMPILE_CACHE"] = str(tmp / "jax-compile")

    import json

    from analysis.sweep_plots import plot_sweep
    from scaling import compile_cache, sweep

    compile_cache.enable()
    if args.no_compile_ahead:
        from scaling import train

        train.Trainer.compile_ahead = lambda self, pool: None
    plan = sweep.make_plan(sweep.load_spec(args.config), {"train": {"progress": "false"}})
    out = tmp / "sweep"
    trainers: dict = {}  # the sweep's compiled functions, one Trainer per shape
    timer = StepTimer(plan, tmp / "scratch-steps", trainers)
    t0 = time.perf_counter()
    sweep.execute(
        plan,
        out,
        progress=False,
        echo=lambda *a: None,
        trainers=trainers,
        after_run=timer,
        plot=plot_sweep,
        compile_ahead=not args.no_compile_ahead,
    )
    wall = time.perf_counter() - t0 - timer.spent
    timer(last=True)  # a last round on the idle machine
    t0 = time.perf_counter()
    sweep.finalize(plan, out, plot=plot_sweep, echo=lambda *a: None, force=True)
    fit_s = time.perf_counter() - t0  # (already inside the sweep's wall time: timed again)

    parts = {
        "train steps": 0.0,
        "compile (init and train step, waited for)": 0.0,
        "evaluation": 0.0,
        "checkpoints": 0.0,
        "data (batch assembly)": 0.0,
    }
    per_run = []
    for r in plan.runs:
        summary = json.loads((out / "runs" / r.run_id / "summary.json").read_text())
        c = isolated_costs(r.cfg, tmp / "scratch" / r.run_id, trainers)
        c["step_s"] = timer.step_s(r)
        every, ev = r.cfg.checkpoint.every_steps, r.cfg.train.eval_every
        first = r.stable_steps or 0  # a cooldown branch trains only the steps after its branch point
        # saves after the run's first step: periodic ones (none in the last quarter-interval before
        # the end: Checkpointer.due), a parent's at its branches' starts, and the final one
        periodic = {s for s in range(every, r.steps, every) if r.steps - s >= every // 4} if every else set()
        n_ckpt = 1 + len({s for s in periodic | set(r.keep_steps) if first < s < r.steps})
        n_eval = len({s for s in range(ev, r.steps, ev) if s > first} | {r.steps})
        parts["train steps"] += r.train_steps * c["step_s"]
        parts["compile (init and train step, waited for)"] += summary["compile_s"]
        parts["evaluation"] += n_eval * c["eval_s"]
        parts["checkpoints"] += n_ckpt * c["ckpt_s"]
        parts["data (batch assembly)"] += r.train_steps * c["data_s"]
        per_run.append((r.run_id, summary["wall_s"], r.train_steps * c["step_s"], summary["compile_s"]))
    parts["fit and plots"] = fit_s
    parts["other (run set-up, eval/FLOP-count compile waits, logging, results)"] = wall - sum(parts.values())

    print(
        f"sweep {plan.spec.name}: {len(plan.runs)} runs, wall {wall:.1f}s "
        f"({'warm' if args.warm_cache else 'fresh'} compilation cache"
        f"{', no compile-ahead' if args.no_compile_ahead else ''})"
    )
    print(f"  {'run':<26} {'wall_s':>8} {'steps_s':>8} {'compile_s':>9}  steps' share")
    for rid, w, s, c in per_run:
        print(f"  {rid:<26} {w:8.2f} {s:8.2f} {c:9.2f}  {s / w:6.1%}")
    outside = 1 - parts["train steps"] / wall
    print(
        f"share of the sweep's wall time outside training steps: {outside:.1%} "
        f"({(wall - parts['train steps']) / len(plan.runs):.2f}s per run)"
    )
    for k, v in parts.items():
        print(f"  {k:<55} {v:8.2f}s  {v / wall:6.1%}")
    import jax

    config = Path(args.config).resolve()
    return write_result(
        args.out or result_path("sweep_overhead"),
        {
            "backend": jax.default_backend(),
            "sweep": plan.spec.name,
            "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
            "runs": len(plan.runs),
            "cache": "warm" if args.warm_cache else "fresh",
            "compile_ahead": not args.no_compile_ahead,
            "wall_s": wall,
            "outside_share": outside,
            "shares": {k: v / wall for k, v in parts.items()},
            "per_run": [{"run_id": rid, "wall_s": w, "steps_s": s, "compile_s": c} for rid, w, s, c in per_run],
        },
    )


if __name__ == "__main__":
    main()
