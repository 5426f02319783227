"""Hold-out check of approach 3: fit without the largest-compute runs, predict those."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.errors import UsageError
from scaling.laws import approach3
from scaling.laws.approach3 import LawFit
from scaling.laws.law import DEFAULT_DELTA, N_PARAMS, as_runs
from scaling.laws.record import JsonRecord

__all__ = ["HeldOutRun", "Holdout", "holdout_top_c"]


@dataclass(frozen=True)
class HeldOutRun(JsonRecord):
    """One held-out run: the loss observed and the loss the fit without it predicts."""

    N: float
    D: float
    C: float
    observed: float
    predicted: float

    @property
    def rel_error(self) -> float:
        """(predicted - observed) / observed."""
        return (self.predicted - self.observed) / self.observed

    def to_dict(self) -> dict:
        return {
            "N": self.N,
            "D": self.D,
            "C": self.C,
            "observed": self.observed,
            "predicted": self.predicted,
            "rel_error": self.rel_error,
        }


@dataclass(frozen=True)
class Holdout(JsonRecord):
    """The fit on all but the ``k`` largest-compute runs, and its predictions of those."""

    k: int
    fit: LawFit
    runs: tuple[HeldOutRun, ...]  # largest C first

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs([r.rel_error for r in self.runs])))

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "fit": self.fit.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "mean_abs_rel_error": self.mean_abs_rel_error,
        }


def holdout_top_c(N, D, L, k: int, *, C=None, delta: float = DEFAULT_DELTA, starts=None) -> Holdout:
    """Fit approach 3 without the k largest-compute runs (C defaults to 6 N D); predict those."""
    N, D, L = as_runs(N, D, L)
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=np.float64).ravel()
    if C.size != N.size:
        raise UsageError("C has a different length from N")
    if k < 1:
        raise UsageError(f"--holdout-top-c needs K >= 1, got {k}")
    if N.size - k < N_PARAMS:
        raise UsageError(f"holding out {k} of {N.size} runs leaves {N.size - k}, fewer than the {N_PARAMS} parameters")
    order = np.argsort(-C, kind="stable")
    held, kept = order[:k], order[k:]
    fit = approach3.fit_approach3(N[kept], D[kept], L[kept], delta=delta, starts=starts)
    pred = fit.predict(N[held], D[held])
    runs = tuple(
        HeldOutRun(N=float(N[i]), D=float(D[i]), C=float(C[i]), observed=float(L[i]), predicted=float(p))
        for i, p in zip(held, pred)
    )
    return Holdout(k=int(k), fit=fit, runs=runs)
