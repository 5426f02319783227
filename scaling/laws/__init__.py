"""Chinchilla scaling-law fits: approaches 1, 2 and 3, the compute-optimal frontier, bootstrap
intervals, hold-out checks and diagnostics.  numpy/scipy only (no JAX): fits run anywhere.

- :mod:`~scaling.laws.law`: the law, its frontier and compute-optimal split, degenerate laws
- :mod:`~scaling.laws.lbfgs`: a general batched L-BFGS
- :mod:`~scaling.laws.approach3`: the law fitted to every run (Hoffmann et al.'s Huber fit)
- :mod:`~scaling.laws.approach2`: IsoFLOP parabolas, and their residual bootstrap
- :mod:`~scaling.laws.approach1`: envelopes of training curves and of annealed endpoints
- :mod:`~scaling.laws.bootstrap`, :mod:`~scaling.laws.holdout`: approach 3's intervals and
  its hold-out check
- :mod:`~scaling.laws.checks`, :mod:`~scaling.laws.verdict`: diagnostics of a fitted law, and their
  thresholds, records and verdict
- :mod:`~scaling.laws.count_models`: n-gram count models, the regime check's baseline
- :mod:`~scaling.laws.support`: which approaches a set of runs supports (the one rule)
- :mod:`~scaling.laws.reach`: how many decades of compute a prediction lies beyond the runs
- :mod:`~scaling.laws.runs`: the inputs read and validated (a CSV of runs; curves and endpoints
  from run directories are :mod:`scaling.run_curves`'s, as arrays)
- :mod:`~scaling.laws.fit`, :mod:`~scaling.laws.result`, :mod:`~scaling.laws.report`: every
  requested fit of a table of runs, its typed result and JSON form, and its readable report

The names below are re-exported here so that ``from scaling.laws import fit_approach3``
reaches them; code of the package imports them from their modules.
"""

from scaling.laws.approach1 import (
    EndpointEnvelope,
    Envelope,
    EnvelopePoint,
    annealed_curves,
    fit_approach1,
    fit_approach1_endpoints,
)
from scaling.laws.approach2 import (
    Approach2Bootstrap,
    IsoFlopFit,
    IsoFlopMinimum,
    SkippedBudget,
    bootstrap_approach2,
    fit_approach2,
    isoflop_groups,
    parabola_residuals,
)
from scaling.laws.approach3 import LawFit, fit_approach3, hoffmann_grid, huber, objective, objective_and_grad_batch
from scaling.laws.bootstrap import SAMPLE_NAMES, Bootstrap, bootstrap_approach3, bootstrap_starts, percentile_interval
from scaling.laws.checks import diagnose
from scaling.laws.fit import FitOptions, fit_runs, fit_table, validate
from scaling.laws.holdout import HeldOutRun, Holdout, holdout_top_c
from scaling.laws.law import (
    DEFAULT_DELTA,
    DEGENERATE_REL,
    DERIVED_NAMES,
    N_PARAMS,
    PARAM_NAMES,
    compute_optimal,
    degenerate_reasons,
    exponent_reasons,
    frontier,
    law_loss,
    power_law_fit,
)
from scaling.laws.lbfgs import BatchResult, lbfgs_batch
from scaling.laws.record import NotRun, json_safe
from scaling.laws.result import FitOutput, FitResult, Prediction
from scaling.laws.runs import Runs, load_runs
from scaling.laws.support import Requirements
from scaling.laws.verdict import Check, Thresholds, Verdict

__all__ = [
    "PARAM_NAMES",
    "DERIVED_NAMES",
    "N_PARAMS",
    "DEFAULT_DELTA",
    "DEGENERATE_REL",
    "SAMPLE_NAMES",
    "law_loss",
    "frontier",
    "compute_optimal",
    "degenerate_reasons",
    "exponent_reasons",
    "power_law_fit",
    "BatchResult",
    "lbfgs_batch",
    "LawFit",
    "huber",
    "objective",
    "objective_and_grad_batch",
    "hoffmann_grid",
    "fit_approach3",
    "Bootstrap",
    "bootstrap_approach3",
    "bootstrap_starts",
    "percentile_interval",
    "HeldOutRun",
    "Holdout",
    "holdout_top_c",
    "IsoFlopFit",
    "IsoFlopMinimum",
    "SkippedBudget",
    "Approach2Bootstrap",
    "isoflop_groups",
    "fit_approach2",
    "bootstrap_approach2",
    "parabola_residuals",
    "EnvelopePoint",
    "Envelope",
    "EndpointEnvelope",
    "fit_approach1",
    "annealed_curves",
    "fit_approach1_endpoints",
    "Check",
    "Thresholds",
    "Verdict",
    "diagnose",
    "Requirements",
    "NotRun",
    "json_safe",
    "Runs",
    "load_runs",
    "FitOptions",
    "validate",
    "fit_runs",
    "fit_table",
    "Prediction",
    "FitResult",
    "FitOutput",
]
