"""Curriculum learning on the data layer: pacing (competence) functions, the order of the
training windows by difficulty, and the competence sampler.

A competence-based curriculum (Platanios et al. 2019) shows the model the easiest share
c(t) of the training data at step t and widens it to the whole corpus by step T.

The windows' difficulty scores (the unit, the score kinds and their cache) are
:mod:`scaling.data.curriculum_scores`'s; this module orders windows by them and samples.

**CDF.** Scores become their empirical CDF in (0, 1]: ``cdf[w] = rank(w) / n`` with ranks
1..n in order of increasing score. When scores are distinct this is the ECDF
``#{v : s_v <= s_w} / n``; ties (every window of a document under ``doc:``, or a constant
score such as ``length`` on a one-document corpus) are broken by a fixed random permutation
drawn from the run's seed, so competence c always admits exactly ``floor(c n)`` windows (a
constant score then restricts early training to a random subset: a useful control).

**Pacing** c(t) of the step t (0-based) with horizon T = ``curriculum_horizon`` x the run's
steps and initial competence c0 (each starts at c0, is non-decreasing and is 1 from T on):

- ``linear``: ``min(1, t (1 - c0) / T + c0)``
- ``root``:   ``min(1, (t (1 - c0^p) / T + c0^p)^(1/p))`` with p = 2 (Platanios et al.)
- ``step``:   baby steps: ``c0 + (1 - c0) floor(K t / T) / K``, K = 4 equal stages
- ``exp``:    geometric growth ``c0^(1 - t/T)`` (c0 times a constant factor per step)

``anti-<pacing>`` reverses the order (hardest first) as a control.

**Sampler.** The batch of step t is drawn uniformly, without replacement within the batch,
from the ``max(1, floor(c(t) n))`` easiest windows, by ``np.random.default_rng([seed, t,
SALT])``: a pure function of (seed, t), so runs resume exactly, and rows [lo, hi) are
sliced from the full batch, so every process sees the same batch. Once c(t) = 1 the
samples follow per-epoch permutations of all windows drawn from (seed, epoch), as the plain
loader's do (sample s of the stream is position s mod n of epoch s div n's permutation), so
after the horizon batches hold no repeats within an epoch, like the ``none`` arm's. (The
plain loader also shifts its window grid by a random offset per epoch; the curriculum keeps
the unshifted windows it has scored.) Token accounting (tokens, FLOPs) is unchanged: only
which windows fill a batch changes.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import numpy as np

from scaling.curriculum_config import check_config, parse_curriculum, parse_score
from scaling.data.curriculum_scores import ModelScoring, load_scores
from scaling.data.tokens import TokenSplits
from scaling.errors import UsageError

__all__ = [
    "PACING_FUNCTIONS",
    "CompetenceSampler",
    "difficulty_order",
    "empirical_cdf",
    "exp_pacing",
    "linear_pacing",
    "make_sampler",
    "root_pacing",
    "step_pacing",
]

STEP_STAGES = 4  # stages of the baby-steps schedule
ROOT_POWER = 2  # p of root pacing
SALT = 0x5EED_C0DE  # mixes the curriculum's draws apart from other uses of (seed, step)
_TIE_SALT = 0x71E


# ----------------------------------------------------------------------------- pacing


def _pace(t, T: float, c0: float, value) -> np.ndarray | float:
    if T <= 0:
        raise UsageError(f"pacing horizon T must be > 0, got {T}")
    t = np.asarray(t, dtype=np.float64)
    out = np.where(t >= T, 1.0, np.minimum(1.0, value))
    return float(out) if out.ndim == 0 else out


def linear_pacing(t, T: float, c0: float):
    """``min(1, t (1 - c0) / T + c0)``."""
    t_ = np.asarray(t, dtype=np.float64)
    return _pace(t, T, c0, t_ * (1 - c0) / T + c0)


def root_pacing(t, T: float, c0: float, p: float = ROOT_POWER):
    """``min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``."""
    t_ = np.asarray(t, dtype=np.float64)
    return _pace(t, T, c0, (t_ * (1 - c0**p) / T + c0**p) ** (1.0 / p))


def step_pacing(t, T: float, c0: float, n_stages: int = STEP_STAGES):
    """Baby steps: ``c0 + (1 - c0) floor(n_stages t / T) / n_stages`` (n_stages + 1 levels)."""
    t_ = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return _pace(t, T, c0, c0 + (1 - c0) * np.floor(n_stages * t_ / T) / n_stages)


def exp_pacing(t, T: float, c0: float):
    """Exponential (geometric) growth from c0 to 1: ``c0^(1 - t/T)``."""
    t_ = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return _pace(t, T, c0, c0 ** (1.0 - t_ / T))


PACING_FUNCTIONS: dict[str, Callable] = {
    "linear": linear_pacing,
    "root": root_pacing,
    "step": step_pacing,
    "exp": exp_pacing,
}


# ----------------------------------------------------------------------------- CDF and sampler


def difficulty_order(scores: np.ndarray, tie_seed: int = 0) -> np.ndarray:
    """Window ids from easiest to hardest; ties in a fixed random order drawn from ``tie_seed``."""
    scores = np.asarray(scores, np.float64)
    tie = np.random.default_rng([tie_seed, _TIE_SALT]).permutation(len(scores))
    return np.lexsort((tie, scores))


def empirical_cdf(scores: np.ndarray, tie_seed: int = 0) -> np.ndarray:
    """``rank / n`` in (0, 1] (the ECDF of the scores when they are distinct; ties broken at random)."""
    order = difficulty_order(scores, tie_seed)
    cdf = np.empty(len(order), np.float64)
    cdf[order] = np.arange(1, len(order) + 1) / len(order)
    return cdf


class CompetenceSampler:
    """``sampler(step, sample_ids) -> window ids`` for :class:`scaling.data.Batches`."""

    def __init__(
        self, order: np.ndarray, pacing: Callable, horizon_steps: float, c0: float, seed: int, batch_size: int
    ):
        self.order = np.asarray(order, np.int64)  # easiest first (hardest first for anti-)
        self.n = len(self.order)
        self.cdf = np.empty(self.n, np.float64)
        self.cdf[self.order] = np.arange(1, self.n + 1) / self.n
        self.pacing, self.horizon_steps, self.c0 = pacing, float(horizon_steps), float(c0)
        self.seed, self.batch_size = int(seed), int(batch_size)

    def competence(self, step: int) -> float:
        return float(self.pacing(step, self.horizon_steps, self.c0))

    def n_eligible(self, step: int) -> int:
        c = self.competence(step)
        if c >= 1.0:
            return self.n
        return int(min(self.n, max(1, math.floor(c * self.n + 1e-9))))

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> np.ndarray:  # drawn as the plain loader draws its permutations
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def draw(self, step: int, k: int) -> np.ndarray:
        """The full batch of ``step`` drawn uniformly from the ``k`` easiest windows."""
        rng = np.random.default_rng([self.seed, step, SALT])
        return self.order[rng.choice(k, size=self.batch_size, replace=k < self.batch_size)]

    @functools.lru_cache(maxsize=4)
    def batch(self, step: int) -> np.ndarray:
        k = self.n_eligible(step)
        if k < self.n:
            return self.draw(step, k)
        sample = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epoch, pos = np.divmod(sample, self.n)
        out = np.empty_like(sample)
        for e in np.unique(epoch):
            m = epoch == e
            out[m] = self._perm(int(e))[pos[m]]
        return out

    def __call__(self, step: int, sample_ids: np.ndarray) -> np.ndarray:
        return self.batch(int(step))[np.asarray(sample_ids, np.int64) - int(step) * self.batch_size]


def make_sampler(
    cfg, splits: TokenSplits, total_steps: int, progress: bool | None = None, model_scoring: ModelScoring | None = None
) -> CompetenceSampler:
    """The competence sampler of a run config (``cfg.data.curriculum`` set) over ``total_steps``
    steps. Prints one line describing it on stderr (and a progress bar while scoring with a
    model when ``cfg.train.progress``) unless ``progress`` is False."""
    check_config(cfg.data)
    pacing_name, anti = parse_curriculum(cfg.data.curriculum)
    spec = parse_score(cfg.data.curriculum_score)
    seq_len = cfg.model.seq_len
    if (len(splits.train) - 1) // seq_len < 1:
        raise UsageError(
            f"the training split ({len(splits.train)} tokens) is shorter than one sequence "
            f"of model.seq_len + 1 = {seq_len + 1} tokens"
        )
    scores = load_scores(
        splits,
        seq_len,
        spec,
        progress=cfg.train.progress if progress is None else progress,
        model_scoring=model_scoring,
    )
    order = difficulty_order(scores, cfg.train.seed)
    if anti:
        order = order[::-1]
    horizon = cfg.data.curriculum_horizon * total_steps
    if progress is not False:
        const = " (constant: windows enter in a random order)" if np.ptp(scores) == 0 else ""
        print(
            f"curriculum: {cfg.data.curriculum} pacing on {spec.describe()}{const}, c0 {cfg.data.curriculum_c0:g}, "
            f"full competence at step {horizon:g} of {total_steps}; {len(scores)} windows",
            file=sys.stderr,
        )
    return CompetenceSampler(
        order, PACING_FUNCTIONS[pacing_name], horizon, cfg.data.curriculum_c0, cfg.train.seed, cfg.train.batch_size
    )
