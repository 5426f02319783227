"""Bootstrap intervals for approach 3: resample runs with replacement, refit, percentile
intervals for E, A, B, alpha, beta, a, b, G.

A resample is refitted by L-BFGS from 32 of the grid starts whose full-data run reached the
optimum (``starts="best"``, the default: fast; see :func:`bootstrap_starts`) or from the
whole grid (``starts="grid"``).  Resamples are fitted together in chunks, each one batch of
(resample, start) problems with per-problem run weights (counts); with more than one usable
CPU the chunks run in as many worker processes (the batched L-BFGS holds the GIL, so threads
would not help). A problem's refit is the same bits whatever batch it is in (the objective
computes each row on its own), so the samples do not depend on the chunks or workers. A
worker is a fresh interpreter running :func:`_serve` of this module, which reads its chunks
from stdin and writes their refits to stdout: unlike multiprocessing's spawn, it never
re-imports the caller's ``__main__`` (a script without a main guard would run again).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scaling.errors import UsageError
from scaling.laws import approach3, lbfgs
from scaling.laws.approach3 import LawFit, hoffmann_grid, objective_and_grad_batch
from scaling.laws.law import DEFAULT_DELTA, DERIVED_NAMES, N_PARAMS, PARAM_NAMES, as_runs, compute_optimal, frontier
from scaling.laws.record import JsonRecord
from scaling.machine import usable_cpus

__all__ = ["SAMPLE_NAMES", "Bootstrap", "percentile_interval", "bootstrap_starts", "bootstrap_approach3"]

SAMPLE_NAMES = PARAM_NAMES + DERIVED_NAMES

MAX_CHUNK_WEIGHTS = 1 << 22
"""Most (resample, start, run) weights one batch of refits holds: larger batches share the
L-BFGS iterations of their slowest starts (fewer, larger numpy calls) but hold more memory."""


def percentile_interval(samples, level: float = 0.95):
    """Percentile interval(s) [lo, hi] of samples along axis 0 at the given level."""
    if not 0 < level < 1:
        raise UsageError(f"confidence level must be in (0, 1), got {level}")
    q = [50.0 * (1 - level), 50.0 * (1 + level)]
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[0] == 0:  # every resample failed: no interval
        return np.full((2,) + samples.shape[1:], np.nan)
    return np.percentile(samples, q, axis=0)


@dataclass(frozen=True)
class Bootstrap(JsonRecord):
    """Bootstrap refits: samples[:, j] is SAMPLE_NAMES[j] (E, A, B, alpha, beta, a, b, G)."""

    samples: np.ndarray
    level: float
    seed: int
    starts: str
    n_failed: int

    @property
    def n_resamples(self) -> int:
        return int(self.samples.shape[0] + self.n_failed)

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, SAMPLE_NAMES.index(name)]

    def interval(self, name: str) -> tuple[float, float]:
        lo, hi = percentile_interval(self.column(name), self.level)
        return float(lo), float(hi)

    def ci(self) -> dict[str, list[float]]:
        lohi = percentile_interval(self.samples, self.level)
        return {k: [float(lohi[0, j]), float(lohi[1, j])] for j, k in enumerate(SAMPLE_NAMES)}

    def optimal_interval(self, C: float) -> dict[str, list[float]]:
        """Percentile intervals of the compute-optimal N_opt, D_opt and loss at budget C."""
        vals = np.stack(compute_optimal(C, *self.samples[:, :N_PARAMS].T), axis=1)
        lohi = percentile_interval(vals, self.level)
        return {k: [float(lohi[0, j]), float(lohi[1, j])] for j, k in enumerate(("N_opt", "D_opt", "loss"))}

    def to_dict(self) -> dict:
        return {
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "starts": self.starts,
            "n_failed": self.n_failed,
        }


def _samples_from_theta(theta_k5):
    a, b, e, alpha, beta = theta_k5.T
    E, A, B = np.exp(e), np.exp(a), np.exp(b)
    G, aa, bb = frontier(E, A, B, alpha, beta)
    return np.stack([E, A, B, alpha, beta, aa, bb, G], axis=1)


def bootstrap_starts(fit: LawFit, n_starts: int = 32) -> np.ndarray:
    """The grid starts a bootstrap refit runs from: ``n_starts`` of the starts whose
    full-data run reached the optimum (within 1e-6 relative), spread evenly over them
    (topped up with the next best-ending starts when fewer reached it)."""
    ranked = fit.ranked_starts
    if ranked is None or len(ranked) == 0:
        return fit.theta[None, :]
    n_starts = max(1, min(int(n_starts), len(ranked)))
    pool = max(fit.n_starts_at_best, n_starts)
    pick = np.unique(np.linspace(0, pool - 1, n_starts).round().astype(np.int64))
    return np.asarray(ranked)[pick]


def _refit_chunk(lN, lD, lL, counts_rn, x_starts, delta) -> np.ndarray:
    """The best refit of each resample of a chunk (rows of ``counts_rn``: run weights) from
    every start of ``x_starts``; NaN rows where no start ended finite. Problem i is resample
    i // k from start i % k; each problem's refit is the same whatever else the chunk holds."""
    nr, k = counts_rn.shape[0], x_starts.shape[0]

    def fun_grad(x, rows):
        return objective_and_grad_batch(x, lN, lD, lL, counts_rn[rows // k], delta)

    res = lbfgs.lbfgs_batch(fun_grad, np.tile(x_starts, (nr, 1)))
    fr = np.where(np.isfinite(res.f), res.f, np.inf).reshape(nr, k)
    best = np.argmin(fr, axis=1)
    thetas = res.x.reshape(nr, k, N_PARAMS)[np.arange(nr), best]
    thetas[~np.isfinite(fr[np.arange(nr), best])] = np.nan
    return thetas


def _serve() -> None:
    """A worker of :func:`_refit_in_workers`: its jobs from stdin, their refits to stdout."""
    pickle.dump([_refit_chunk(*job) for job in pickle.load(sys.stdin.buffer)], sys.stdout.buffer)


_WORKER = "from scaling.laws.bootstrap import _serve; _serve()"


def _refit_in_workers(jobs: list[tuple], workers: int, bar) -> list[np.ndarray]:
    """``_refit_chunk(*job)`` for each job, job i in worker process i % workers; the refits in
    the jobs' order."""
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds the scaling package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    mine = [jobs[w::workers] for w in range(workers)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for _ in mine
    ]
    try:
        for proc, part in zip(procs, mine):  # each worker reads all its jobs before it starts
            pickle.dump(part, proc.stdin)
            proc.stdin.close()
        results = []
        for proc in procs:
            out = proc.stdout.read()
            if proc.wait() != 0:
                raise RuntimeError(f"a bootstrap worker process failed (exit {proc.returncode}); its error is above")
            results.append(pickle.loads(out))
            bar.update(sum(r.shape[0] for r in results[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [results[i % workers][i // workers] for i in range(len(jobs))]


def bootstrap_approach3(
    N,
    D,
    L,
    fit: LawFit | None = None,
    n_resamples: int = 1000,
    *,
    seed: int = 0,
    level: float = 0.95,
    delta: float | None = None,
    starts: str = "best",
    n_starts: int = 32,
    chunk: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> Bootstrap:
    """Refit approach 3 on ``n_resamples`` resamples of the runs (with replacement).

    Each refit is the approach-3 procedure (L-BFGS from grid starts, keep the best) run
    from ``starts="best"``: the ``n_starts`` grid starts whose run on the full data
    reached the optimum (:func:`bootstrap_starts`; default, fast), or ``"grid"``: all
    4,500.  A refit does not start from the full-data optimum itself: with delta = 1e-3
    the objective is nearly piecewise linear and L-BFGS stops at the nearest kink, so the
    intervals would come out far too narrow.  ``workers``: processes to refit chunks of
    resamples in (default: the usable CPUs; 1 fits them in this process); ``chunk``: resamples
    per batch (default: as many as spread them over the workers, within
    ``MAX_CHUNK_WEIGHTS``). The samples are the same whatever the workers and chunks: a
    problem's L-BFGS run does not depend on the others in its batch.
    """
    N, D, L = as_runs(N, D, L)
    if n_resamples < 1:
        raise UsageError(f"--bootstrap needs at least 1 resample, got {n_resamples}")
    if starts not in ("best", "grid"):
        raise UsageError(f"bootstrap starts must be 'best' or 'grid', got {starts!r}")
    percentile_interval(np.zeros(2), level)  # validates level
    if fit is None:
        fit = approach3.fit_approach3(N, D, L, delta=DEFAULT_DELTA if delta is None else delta)
    delta = fit.delta if delta is None else delta
    x_starts = hoffmann_grid() if starts == "grid" else bootstrap_starts(fit, n_starts)
    k = x_starts.shape[0]
    n = N.size
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n), idx.ravel()), 1.0)

    workers = min(usable_cpus() if workers is None else max(1, int(workers)), n_resamples)
    if chunk is None:  # one chunk per worker, within MAX_CHUNK_WEIGHTS
        chunk = min(-(-n_resamples // workers), max(1, MAX_CHUNK_WEIGHTS // (k * n)))
    chunks = [counts[r0 : r0 + chunk] for r0 in range(0, n_resamples, max(1, int(chunk)))]
    workers = min(workers, len(chunks))
    jobs = [(lN, lD, lL, cw, x_starts, delta) for cw in chunks]
    with tqdm(total=n_resamples, desc="bootstrap", unit="fit", disable=not progress, file=sys.stderr) as bar:
        if workers > 1:
            parts = _refit_in_workers(jobs, workers, bar)
        else:
            parts = []
            for job in jobs:
                parts.append(_refit_chunk(*job))
                bar.update(parts[-1].shape[0])
    thetas = np.concatenate(parts)
    good = np.all(np.isfinite(thetas), axis=1)
    samples = _samples_from_theta(thetas[good])
    good_s = np.all(np.isfinite(samples), axis=1)
    samples = samples[good_s]
    return Bootstrap(
        samples=samples,
        level=float(level),
        seed=int(seed),
        starts=starts,
        n_failed=int(n_resamples - samples.shape[0]),
    )
