"""``--dry-run`` calibration: a few timed steps of each shape estimate a sweep's wall time."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.laws import approach3
from scaling.sweep.plan import PlannedRun

# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Timings of a few real steps of some planned shapes, and a per-run wall-time model."""

    points: tuple[dict, ...]  # per calibrated shape: flops_per_step, step_s, eval_s, compile_s, ckpt_s
    fixed_s: float = 0.5  # per run: Run set-up, summary, metrics

    def _interp(self, x: float, key: str, xkey: str = "flops_per_step") -> float:
        pts = sorted(self.points, key=lambda p: p[xkey])
        if len(pts) == 1 or pts[0][xkey] == pts[-1][xkey]:
            p = pts[0]
            return p[key] * (x / p[xkey] if key in ("step_s", "eval_s") else 1.0)
        lo, hi = pts[0], pts[-1]
        lx = math.log(x)
        t = (lx - math.log(lo[xkey])) / (math.log(hi[xkey]) - math.log(lo[xkey]))
        ya, yb = math.log(max(lo[key], 1e-9)), math.log(max(hi[key], 1e-9))
        if key not in ("step_s", "eval_s"):
            t = min(max(t, 0.0), 1.0)  # compile and checkpoint times: no extrapolation
        return math.exp(ya + t * (yb - ya))

    def estimate(self, r: PlannedRun, compiles: bool = True) -> float:
        """Seconds: compile + steps + evaluations + checkpoints + a fixed overhead. ``compiles``
        False: an earlier run of the same shape in the process compiled the step already. A
        cooldown branch counts its steps after the branch point only; a parent its kept steps."""
        c = r.cfg
        f = r.flops_per_step
        first, steps = r.steps - r.train_steps, r.train_steps

        def count(every: int) -> int:  # multiples of ``every`` after ``first``, and the last step
            return r.steps // every - first // every + (1 if r.steps % every else 0)

        n_eval = count(c.train.eval_every)
        n_ckpt = (count(c.checkpoint.every_steps) if c.checkpoint.every_steps else 1) + len(r.keep_steps)
        return (
            compiles * self._interp(f, "compile_s")
            + steps * self._interp(f, "step_s")
            + n_eval * c.train.eval_batches * self._interp(f, "eval_s")
            + n_ckpt * self._interp(f, "ckpt_s")
            + self.fixed_s
        )

    def describe(self) -> str:
        parts = [
            f"{p['run_id']}: {p['step_s'] * 1e3:.1f} ms/step ({p['flops_per_step'] / p['step_s'] / 1e9:.2f} "
            f"GFLOP/s), compile {p['compile_s']:.1f}s, eval {p['eval_s'] * 1e3:.1f} ms/batch, "
            f"checkpoint {p['ckpt_s']:.2f}s"
            for p in self.points
        ]
        return "calibration on this machine (" + "; ".join(parts) + ")"


def calibrate(
    runs: tuple[PlannedRun, ...] | list[PlannedRun], *, target_s: float = 1.0, max_steps: int = 20
) -> Calibration:
    """Time real train steps of the smallest and the largest planned shape (by FLOPs per step)
    in this process: compile, a few steps, an evaluation batch and a checkpoint save (into a
    temporary directory). Random tokens; nothing of the sweep is written."""
    import jax  # the training stack loads here, when a calibration runs (see scaling.sweep)

    from scaling import sharding as sh
    from scaling.checkpoint import Checkpointer
    from scaling.train import Trainer

    by_flops = sorted(runs, key=lambda r: r.flops_per_step)
    chosen = [by_flops[0]] + ([by_flops[-1]] if by_flops[-1].shape != by_flops[0].shape else [])
    points = []
    for r in chosen:
        cfg = r.cfg
        mesh = sh.make_mesh(sh.mesh_shape(cfg.mesh, jax.device_count()))
        trainer = Trainer(cfg, mesh, r.steps)
        t0 = time.perf_counter()
        state = trainer.init_state()
        trainer.compile_step()
        compile_s = time.perf_counter() - t0
        lo, hi = sh.process_batch_rows(mesh, cfg.train.batch_size)
        rng = np.random.default_rng(0)
        local = rng.integers(0, cfg.model.vocab_size, (hi - lo, cfg.model.seq_len + 1)).astype(np.int32)
        batch = sh.make_global_batch(mesh, local, cfg.train.batch_size)
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        n, t0 = 0, time.perf_counter()
        while n < max_steps and (n < 3 or time.perf_counter() - t0 < target_s):
            state, m = trainer.train_step(state, batch)
            jax.block_until_ready(m)
            n += 1
        step_s = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.eval_step(state.params, batch))
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(trainer.eval_step(state.params, batch))
        eval_s = (time.perf_counter() - t0) / 3
        with tempfile.TemporaryDirectory(prefix="sweep-calibration-") as tmp:
            ck = Checkpointer(Path(tmp) / "checkpoints", cfg.checkpoint)
            t0 = time.perf_counter()
            ck.save(1, state, {"calibration": True})
            ck.wait()
            ckpt_s = time.perf_counter() - t0
            ck.close()
        points.append(
            {
                "run_id": r.run_id,
                "flops_per_step": r.flops_per_step,
                "step_s": step_s,
                "eval_s": eval_s,
                "compile_s": compile_s,
                "ckpt_s": ckpt_s,
                "steps_timed": n,
            }
        )
    return Calibration(points=tuple(points))


def shape_key(r: PlannedRun) -> tuple:
    """Runs with equal keys share compiled functions when one process trains them (the mesh
    aside, ``train.Trainer.program_key``)."""
    from scaling.train import shape_fields

    return (*shape_fields(r.cfg), r.cfg.mesh)


def fit_seconds(n_runs: int, bootstrap: int, plots_s: float = 15.0) -> float:
    """Estimated seconds of a sweep's fit: one approach-3 fit of ``n_runs`` synthetic points
    from the full start grid, timed here, times the fits the sweep's fit makes (``bootstrap``
    resamples, the single fits of the diagnostics and approach 2's resamples, about 15 more),
    plus ``plots_s`` for the plots."""
    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(3e4), np.log(3e5), max(n_runs, 8)))
    D = np.exp(rng.uniform(np.log(1e6), np.log(3e7), N.size))
    L = 1.0 + 70.0 / N**0.5 + 50.0 / D**0.3
    t0 = time.perf_counter()
    approach3.fit_approach3(N, D, L)
    return (time.perf_counter() - t0) * (bootstrap + 15) + plots_s
