"""A sweep's wall-time estimate: ``--calibrate``'s timed steps of the smallest and the largest
shape, kept in a cache per machine and shapes, or without them a rough estimate from FLOPs.

``--dry-run`` reads the cache (:func:`cached_calibration`) and otherwise prints the rough estimate
(:func:`rough_calibration`), labelled as uncalibrated; ``--calibrate`` times real steps
(:func:`calibrate`) and stores them (:func:`store_calibration`) in ``$SCALING_CACHE_DIR/sweep-calibration/``.
A cached calibration is found again by the machine (backend, devices, cores, XLA flags, JAX
version) and the calibrated shapes' compiled-step keys, so a sweep whose budgets, seeds or
token counts change keeps its calibration while a new shape or machine needs a new one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling import paths
from scaling.errors import UsageError
from scaling.io import atomic_write_text, read_json
from scaling.laws import approach3
from scaling.machine import usable_cpus
from scaling.sweep.plan import PlannedRun
from scaling.sweep.show import format_duration

Runs = tuple[PlannedRun, ...] | list[PlannedRun]

SOURCES = ("calibrated", "cached", "rough")
"""Where a Calibration's timings come from: timed now, an earlier --calibrate's, FLOPs alone."""

ROUGH = {
    # backend: (FLOP/s, seconds per step beside the FLOPs, compile seconds per shape); assumed
    # by the uncalibrated estimate, which can be off by several times either way
    "cpu": (2e10, 1e-3, 10.0),
    "gpu": (2e13, 3e-3, 30.0),
    "tpu": (5e13, 3e-3, 30.0),
}
FIT_S = 0.6  # seconds of one approach-3 fit from the full start grid, assumed when not timed
WORKER_PAYOFF = 2.0
"""``--jobs auto`` trains in worker processes only when the plan's estimated training (steps,
evaluations, checkpoints) is at least this many times the compiling of its shapes: each worker
starts an interpreter and compiles again every shape it trains, which one process compiles once
and overlaps with training, while the workers gain only a share of the training time (see
docs/performance.md, Sweeps in worker processes)."""

# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Timings of a few real steps of some planned shapes, and a per-run wall-time model."""

    points: tuple[dict, ...]  # per calibrated shape: flops_per_step, step_s, eval_s, compile_s, ckpt_s
    fixed_s: float = 0.5  # per run: Run set-up, summary, metrics
    source: str = "calibrated"  # one of SOURCES
    backend: str = ""  # the backend a rough estimate assumed

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

    def compile_seconds(self, r: PlannedRun) -> float:
        """Seconds to compile ``r``'s shape (its train step, init and evaluation)."""
        return self._interp(r.flops_per_step, "compile_s")

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
            compiles * self.compile_seconds(r)
            + steps * self._interp(f, "step_s")
            + n_eval * c.train.eval_batches * self._interp(f, "eval_s")
            + n_ckpt * self._interp(f, "ckpt_s")
            + self.fixed_s
        )

    def estimate_runs(self, runs: tuple[PlannedRun, ...] | list[PlannedRun]) -> dict[str, float]:
        """Seconds per run_id when one process trains ``runs`` in this order (a shape compiles once)."""
        estimates, seen = {}, set()
        for r in runs:
            estimates[r.run_id] = self.estimate(r, compiles=shape_key(r) not in seen)
            seen.add(shape_key(r))
        return estimates

    def describe(self) -> str:
        if self.source == "rough":
            rate, step_s, compile_s = ROUGH[self.backend]
            return (
                f"estimates UNCALIBRATED: from FLOPs alone, assuming {rate / 1e9:g} GFLOP/s, {step_s * 1e3:g} ms "
                f"per step beside them and {compile_s:g}s to compile each shape on a {self.backend} (can be off "
                f"by several times); --dry-run --calibrate times a few real steps on this machine"
            )
        parts = [
            f"{p.get('shape', p['run_id'])}: {p['step_s'] * 1e3:.1f} ms/step "
            f"({p['flops_per_step'] / p['step_s'] / 1e9:.2f} GFLOP/s), compile {p['compile_s']:.1f}s, "
            f"eval {p['eval_s'] * 1e3:.1f} ms/batch, checkpoint {p['ckpt_s']:.2f}s"
            for p in self.points
        ]
        if self.source == "cached":
            return (
                "estimates from an earlier --calibrate on this machine ("
                + "; ".join(parts)
                + "); --dry-run --calibrate times them again"
            )
        return "calibration on this machine (" + "; ".join(parts) + ")"

    def to_json(self) -> dict:
        return {"points": list(self.points), "fixed_s": self.fixed_s}

    @classmethod
    def from_json(cls, d: dict, source: str = "cached") -> Calibration:
        return cls(points=tuple(d["points"]), fixed_s=float(d["fixed_s"]), source=source)


@dataclass(frozen=True)
class WorkerPayoff:
    """Whether a plan's training is long enough to be worth worker processes (:data:`WORKER_PAYOFF`)."""

    training_s: float  # estimated seconds of the runs' steps, evaluations and checkpoints in one process
    compile_s: float  # estimated seconds of compiling each of the runs' shapes once
    shapes: int
    source: str  # the estimate's: "cached" (an earlier --calibrate on this machine) or "rough"

    @property
    def pays_off(self) -> bool:
        return self.training_s >= WORKER_PAYOFF * self.compile_s

    def one_process_note(self) -> str:
        """The line that says why ``--jobs auto`` trains the plan in one process."""
        source = "from an earlier --calibrate" if self.source == "cached" else "from FLOPs, uncalibrated"
        return (
            f"--jobs auto: training in this process: the plan's training (est. {format_duration(self.training_s)}, "
            f"{source}) is short beside compiling its {self.shapes} shape(s) (est. {format_duration(self.compile_s)}) "
            "again in each worker; --jobs N asks for N workers"
        )


def worker_payoff(runs: Runs, backend: str) -> WorkerPayoff:
    """The estimate :class:`WorkerPayoff` weighs for ``runs`` (the scan's and the plan's): an
    earlier ``--calibrate``'s timings of these shapes on this machine, else the rough one."""
    calib = cached_calibration(runs) or rough_calibration(runs, backend)
    firsts = {shape_key(r): r for r in reversed(runs)}
    return WorkerPayoff(
        training_s=sum(calib.estimate(r, compiles=False) for r in runs),
        compile_s=sum(calib.compile_seconds(r) for r in firsts.values()),
        shapes=len(firsts),
        source=calib.source,
    )


def calibrated_runs(runs: tuple[PlannedRun, ...] | list[PlannedRun]) -> list[PlannedRun]:
    """The runs a calibration times: the smallest and the largest shape by FLOPs per step."""
    by_flops = sorted(runs, key=lambda r: r.flops_per_step)
    return [by_flops[0]] + ([by_flops[-1]] if by_flops[-1].shape != by_flops[0].shape else [])


def rough_calibration(runs: tuple[PlannedRun, ...] | list[PlannedRun], backend: str) -> Calibration:
    """An uncalibrated Calibration of ``runs``' calibrated shapes: their FLOPs per step at the
    FLOP rate, per-step overhead and compile time ROUGH assumes for ``backend``."""
    backend = backend if backend in ROUGH else "gpu"
    rate, step_s, compile_s = ROUGH[backend]
    points = tuple(
        {
            "run_id": r.run_id,
            "flops_per_step": r.flops_per_step,
            "step_s": step_s + r.flops_per_step / rate,
            "eval_s": step_s + r.flops_per_step / 3 / rate,  # the forward pass: a third of a step's FLOPs
            "compile_s": compile_s,
            "ckpt_s": 0.1 + 16 * r.n_params / 1e9,  # parameters and two Adam moments, about 1 GB/s
        }
        for r in calibrated_runs(runs)
    )
    return Calibration(points=points, source="rough", backend=backend)


def calibration_key(runs: tuple[PlannedRun, ...] | list[PlannedRun], xla_flags: str | None = None) -> str:
    """The cache key of a calibration of ``runs`` in a process with ``xla_flags`` (None: this
    process's XLA_FLAGS): this machine's backend, devices, cores and JAX version, and the
    compiled-step keys of the shapes it times."""
    import jax  # the backend: started by the plan's checks already (scaling.sweep.plan)

    machine = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "cores": usable_cpus(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags,
    }
    shapes = [repr(shape_key(r)) for r in calibrated_runs(runs)]
    text = json.dumps({"machine": machine, "shapes": shapes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_file(key: str) -> Path:
    return paths.cache_dir() / "sweep-calibration" / f"{key}.json"


def cached_calibration(runs: Runs, xla_flags: str | None = None) -> Calibration | None:
    """The stored calibration of ``runs`` on this machine (see :func:`calibration_key`), or None."""
    path = _cache_file(calibration_key(runs, xla_flags)) if runs else None
    if path is None or not path.is_file():
        return None
    try:
        d = read_json(path, "calibration")
        return Calibration.from_json(d) if isinstance(d, dict) else None
    except (UsageError, KeyError, TypeError, ValueError):
        return None  # an unreadable entry: calibrate again


def store_calibration(runs: tuple[PlannedRun, ...] | list[PlannedRun], calib: Calibration) -> Path | None:
    """Keep ``calib`` (of ``runs``, timed in this process) for later dry runs; None when the
    cache directory is not writable (the estimate is printed all the same)."""
    path = _cache_file(calibration_key(runs))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(calib.to_json(), indent=1))
    except OSError:
        return None
    return path


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
    from scaling.train.programs import eval_chunk

    points = []
    for r in calibrated_runs(runs):
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
        k = eval_chunk(cfg.train.eval_batches)  # batches per evaluation call, as a run's
        stack = sh.make_global_batch(mesh, np.stack([local] * k), cfg.train.batch_size, stacked=True)
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.eval_losses(state.params, stack))
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(trainer.eval_losses(state.params, stack))
        eval_s = (time.perf_counter() - t0) / (3 * k)
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
                "shape": r.shape,
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


def fit_seconds(n_runs: int, bootstrap: int, plots_s: float = 15.0, timed: bool = True) -> float:
    """Estimated seconds of a sweep's fit: one approach-3 fit of ``n_runs`` synthetic points
    from the full start grid, timed here (``timed`` False: FIT_S), times the fits the sweep's fit
    makes (``bootstrap`` resamples, the single fits of the diagnostics and approach 2's
    resamples, about 15 more), plus ``plots_s`` for the plots."""
    if not timed:
        return FIT_S * (bootstrap + 15) + plots_s
    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(3e4), np.log(3e5), max(n_runs, 8)))
    D = np.exp(rng.uniform(np.log(1e6), np.log(3e7), N.size))
    L = 1.0 + 70.0 / N**0.5 + 50.0 / D**0.3
    t0 = time.perf_counter()
    approach3.fit_approach3(N, D, L)
    return (time.perf_counter() - t0) * (bootstrap + 15) + plots_s
