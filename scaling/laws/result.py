"""The typed result of fitting a table of runs, and its JSON form (fit.json).

JSON written by ``python -m analysis.fit`` (a sweep's fit.json has the same keys, plus
``"sweep"``)::

    {
      "E", "A", "B", "alpha", "beta",        # approach 3 (when run)
      "a", "b", "G",                          # its compute-optimal frontier
      "loss", "n_points", "n_starts", "n_starts_at_best", "delta",
      "degenerate": false, "degenerate_reasons": [],
      "ci_level": 0.95,                       # with --bootstrap K
      "ci": {"E": [lo, hi], ..., "a": [lo, hi], "b": [lo, hi], "G": [lo, hi]},
      "bootstrap": {"n_resamples", "seed", "starts", "n_failed"},
      "predict": [{"C", "N_opt", "D_opt", "loss", "ci": {...}}],   # --predict-c
      "holdout": {"k", "fit": {...}, "runs": [{"N", "D", "C", "observed",
                  "predicted", "rel_error"}], "mean_abs_rel_error"},
      "approach2": {"a", "b", "k_n", "k_d", "budgets": "given" | "grouped by C",
                    "budget_tol", "minima": [{"C", "N_opt", "D_opt", "L_min", "n_runs",
                    "parabola": [p2, p1, p0]}], "skipped": [{"C", "reason"}],
                    "degenerate", "degenerate_reasons",
                    "ci_level", "ci": {"a", "b"}, "bootstrap": {"n_resamples", "seed",
                    "method", "n_failed"}, "budget_ci": [{"C", "N_opt": [lo, hi],
                    "D_opt": [lo, hi], "n_no_minimum"}] | "ci_not_run": reason},
      "diagnostics": {"passed", "verdict", "failed", "not_evaluated", "checks"},
      "baseline": {"unigram", "bigram", "trigram", "split", "tokens", "units",
                   "regime_loss"} | {"not_run": reason},   # a sweep's count models
      "noise": {"sigma", "n_pairs", "residual_rms"},      # seed-to-seed vs the law's residuals
      "n_count": "total" | "nonembed",                    # the parameter count the law uses
      "alt_count": {"count", "n_col", <approach 3's keys>} | {"count", "n_col", "not_run"},
      "compute": [{"N", "n_runs", "flops_6nd", "flops_chinchilla", "ratio"}],  # C by both counts
      "approach1": {"a", "b", "k_n", "k_d", "n_runs", "envelope": [{"C", "N_opt",
                    "D_opt", "L_min"}], "degenerate", "degenerate_reasons"}
                   (on annealed endpoints: "input": "annealed endpoints", "refine",
                    "n_endpoints", "c_range", "grid_fraction" in place of "degenerate..."),
      "input": {"results", "n_col", "d_col", "c_col", "loss_col", "drop_top_loss", "n_runs"},
    }

A degenerate fit (approach 3: an exponent <= 0, E at zero, a term negligible at every run;
approaches 1 and 2: a outside (0, 1)) is written with ``"degenerate": true`` and its
reasons; values that do not exist for it (the frontier a, b, G of a law whose exponent is
not positive) are null: the JSON never holds NaN or infinity.

An approach that could not run is ``{"not_run": reason}`` (a sweep's approach 3 under the
key ``"approach3"``).  Fitted per group: ``{"group_col": COL, "groups": {value: <the fit
keys above>}, "approach1": ..., "input": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scaling.laws.approach1 import EndpointEnvelope, Envelope
from scaling.laws.approach2 import Approach2Bootstrap, IsoFlopFit
from scaling.laws.approach3 import LawFit
from scaling.laws.bootstrap import Bootstrap
from scaling.laws.holdout import Holdout
from scaling.laws.record import JsonRecord, NotRun, json_safe
from scaling.laws.verdict import Verdict

__all__ = ["Prediction", "Baseline", "Noise", "AltCount", "ComputeRow", "FitResult", "FitOutput", "COUNT_COLUMNS"]

COUNT_COLUMNS = {"total": "n_params", "nonembed": "n_params_nonembed"}
"""The results column of each parameter count a law can use."""


@dataclass(frozen=True)
class Prediction(JsonRecord):
    """The compute-optimal N, D and loss at budget C (with bootstrap intervals when fitted)."""

    C: float
    N_opt: float
    D_opt: float
    loss: float
    ci: Mapping[str, list[float]] | None = None

    @classmethod
    def at(cls, fit: LawFit, C: float, boot: Bootstrap | None = None) -> Prediction:
        n_opt, d_opt, l_opt = (float(v) for v in fit.optimal(C))
        return cls(float(C), n_opt, d_opt, l_opt, None if boot is None else boot.optimal_interval(C))

    def to_dict(self) -> dict:
        d = {"C": self.C, "N_opt": self.N_opt, "D_opt": self.D_opt, "loss": self.loss}
        if self.ci is not None:
            d["ci"] = dict(self.ci)
        return d


@dataclass(frozen=True)
class Baseline(JsonRecord):
    """Count models (:mod:`scaling.laws.count_models`) scored on the validation tokens the runs'
    loss averages over, in nats per token; ``regime_loss``: the trigram's loss in the fitted
    loss column's units (what the regime check compares with; None when not comparable)."""

    unigram: float
    bigram: float
    trigram: float
    tokens: int  # scored target tokens
    split: str = "validation"
    units: str = "nats per token"
    regime_loss: float | None = None

    def to_dict(self) -> dict:
        return {
            "unigram": self.unigram,
            "bigram": self.bigram,
            "trigram": self.trigram,
            "split": self.split,
            "tokens": self.tokens,
            "units": self.units,
            "regime_loss": self.regime_loss,
        }


@dataclass(frozen=True)
class Noise(JsonRecord):
    """The measurement noise of a loss, from points run with two or more seeds, beside the law's
    residuals: ``sigma`` is the pooled seed-to-seed standard deviation (sqrt of the summed squared
    deviations from each point's mean over n - k; for pairs, sqrt(mean(diff^2) / 2)), ``n_pairs``
    the (N, D) points with 2+ seeds, ``residual_rms`` the RMS of observed - predicted loss over all
    fitted runs.  All in the loss's units; a residual RMS near sigma means the law explains the
    data down to its noise."""

    sigma: float | None
    n_pairs: int
    residual_rms: float | None

    @classmethod
    def from_runs(cls, N, D, L, predicted=None) -> Noise:
        N, D, L = (np.asarray(v, dtype=np.float64).ravel() for v in (N, D, L))
        keys = np.stack([N, D], axis=1)
        _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        means = np.bincount(inv, weights=L) / counts
        repeated = counts[inv] >= 2
        n_groups = int(np.sum(counts >= 2))
        sigma = None
        if n_groups:
            ss = float(np.sum((L[repeated] - means[inv[repeated]]) ** 2))
            sigma = math.sqrt(ss / (int(repeated.sum()) - n_groups))
        rms = None
        if predicted is not None:
            r = L - np.asarray(predicted, dtype=np.float64).ravel()
            rms = float(np.sqrt(np.mean(r**2))) if np.all(np.isfinite(r)) else None
        return cls(sigma=sigma, n_pairs=n_groups, residual_rms=rms)

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "n_pairs": self.n_pairs, "residual_rms": self.residual_rms}


@dataclass(frozen=True)
class AltCount(JsonRecord):
    """Approach 3 fitted with the other parameter count (``count``: total | nonembed)."""

    count: str
    n_col: str
    fit: LawFit | NotRun

    def to_dict(self) -> dict:
        return {"count": self.count, "n_col": self.n_col, **self.fit.to_dict()}


@dataclass(frozen=True)
class ComputeRow(JsonRecord):
    """One model size's training compute by two counts: 6ND, and Chinchilla's Appendix F count
    (attention included, embeddings' parameters not multiplied through); summed over its runs."""

    N: float
    n_runs: int
    flops_6nd: float
    flops_chinchilla: float

    @property
    def ratio(self) -> float:
        """Chinchilla's count over 6ND."""
        return self.flops_chinchilla / self.flops_6nd

    def to_dict(self) -> dict:
        return {
            "N": self.N,
            "n_runs": self.n_runs,
            "flops_6nd": self.flops_6nd,
            "flops_chinchilla": self.flops_chinchilla,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class FitResult(JsonRecord):
    """Every fit of one set of runs; an approach not asked for is None."""

    approach3: LawFit | NotRun | None = None
    bootstrap: Bootstrap | None = None  # approach 3's
    predictions: tuple[Prediction, ...] = ()
    holdout: Holdout | None = None
    approach2: IsoFlopFit | NotRun | None = None
    approach2_ci: Approach2Bootstrap | NotRun | None = None
    approach1: Envelope | EndpointEnvelope | NotRun | None = None
    diagnostics: Verdict | None = None
    baseline: Baseline | NotRun | None = None
    noise: Noise | None = None
    n_count: str | None = None  # the parameter count N the law uses: total | nonembed
    alt_count: AltCount | None = None
    compute: tuple[ComputeRow, ...] = ()

    @property
    def law(self) -> LawFit | None:
        """Approach 3's law, when it was fitted."""
        return self.approach3 if isinstance(self.approach3, LawFit) else None

    @property
    def isoflop(self) -> IsoFlopFit | None:
        return self.approach2 if isinstance(self.approach2, IsoFlopFit) else None

    @property
    def envelope(self) -> Envelope | EndpointEnvelope | None:
        return self.approach1 if isinstance(self.approach1, (Envelope, EndpointEnvelope)) else None

    @property
    def ran(self) -> bool:
        """Whether any approach gave a fit."""
        return self.law is not None or self.isoflop is not None or self.envelope is not None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.law is not None:
            d.update(self.law.to_dict())
            if self.bootstrap is not None:
                d["ci_level"] = self.bootstrap.level
                d["ci"] = self.bootstrap.ci()
                d["bootstrap"] = self.bootstrap.to_dict()
            if self.predictions:
                d["predict"] = [p.to_dict() for p in self.predictions]
            if self.holdout is not None:
                d["holdout"] = self.holdout.to_dict()
        elif self.approach3 is not None:
            d["approach3"] = self.approach3.to_dict()
        if self.approach2 is not None:
            a2 = self.approach2.to_dict()
            if isinstance(self.approach2_ci, Approach2Bootstrap):
                b = self.approach2_ci.to_dict()
                a2.update(ci_level=b["ci_level"], ci=b["ci"], bootstrap=b["bootstrap"], budget_ci=b["budgets"])
            elif isinstance(self.approach2_ci, NotRun):
                a2["ci_not_run"] = self.approach2_ci.reason
            d["approach2"] = a2
        if self.diagnostics is not None:
            d["diagnostics"] = self.diagnostics.to_dict()
        if self.approach1 is not None:
            d["approach1"] = self.approach1.to_dict()
        if self.baseline is not None:
            d["baseline"] = self.baseline.to_dict()
        if self.noise is not None:
            d["noise"] = self.noise.to_dict()
        if self.n_count is not None:
            d["n_count"] = self.n_count
        if self.alt_count is not None:
            d["alt_count"] = self.alt_count.to_dict()
        if self.compute:
            d["compute"] = [r.to_dict() for r in self.compute]
        return json_safe(d)


@dataclass(frozen=True)
class FitOutput(JsonRecord):
    """What a fit.json holds: one FitResult, or one per value of ``group_col`` (with approach 1
    over all the runs when it was fitted on them), the input it came from, and ``error`` when
    no fit could be made."""

    fit: FitResult | None = None
    groups: Mapping[str, FitResult] | None = None
    group_col: str | None = None
    approach1: Envelope | EndpointEnvelope | NotRun | None = None  # over all groups
    input: Mapping | None = None
    error: str | None = None

    @property
    def results(self) -> dict[str | None, FitResult]:
        """The fits by group value (None: the one fit when not grouped)."""
        if self.groups is not None:
            return dict(self.groups)
        return {} if self.fit is None else {None: self.fit}

    @property
    def ran(self) -> bool:
        return any(r.ran for r in self.results.values())

    def to_dict(self) -> dict:
        d: dict = {}
        if self.groups is not None:
            d["group_col"] = self.group_col
            d["groups"] = {k: v.to_dict() for k, v in self.groups.items()}
            if self.approach1 is not None:
                d["approach1"] = self.approach1.to_dict()
        elif self.fit is not None:
            d.update(self.fit.to_dict())
        if self.input is not None:
            d["input"] = dict(self.input)
        if self.error is not None:
            d["error"] = self.error
        return json_safe(d)
