"""Curriculum learning on the data layer: pacing (competence) functions, difficulty scores
computed from the tokens, and the competence sampler.

A competence-based curriculum (Platanios et al. 2019) shows the model the easiest share
c(t) of the training data at step t and widens it to the whole corpus by step T.

**Unit.** The unit that is scored and sampled is a training *sequence*: window ``w`` of
:class:`scaling.data.Batches`, the ``seq_len + 1`` training tokens starting at ``w * seq_len``.
Documents are the runs of tokens ended by the end-of-text id (``splits.manifest["eot"]``;
the end-of-text belongs to the document it ends; a one-document corpus is one document).

**Scores** (``data.curriculum_score = [seq:|doc:]<kind>``; higher = harder):

- ``length``: document length in tokens (end-of-text not counted). Windows all hold
  ``seq_len + 1`` tokens, so a window's length score (``seq:``, the default) is the
  token-weighted mean length of the documents its tokens belong to (the document's length
  for a window inside one document; lower for windows packing several short documents).
- ``rarity``: minus the sum of the log relative frequencies of the window's ``seq_len + 1``
  tokens, frequencies counted on the training split (Platanios et al.'s sentence rarity).
- ``model:<run dir>``: the mean next-token loss (nats) of a reference checkpoint on the
  window. A model lives above the data layer: its scores come from a :class:`ModelScoring`
  the caller passes in (:data:`scaling.difficulty.MODEL_SCORING`).

With ``doc:`` every window gets the score of the document it *starts* in: the document's
length, minus the sum of log frequencies over the document's tokens, or the mean of the
model scores of the windows starting in it.

Scores are computed once and cached as ``.npy`` under ``$SCALING_CACHE_DIR/curriculum/``,
keyed by the token cache (its directory key and manifest), the score kind and unit,
``seq_len`` and, for model scores, the reference run's identity.

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
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.curriculum_config import (
    PACINGS,
    SCORE_KINDS,
    UNITS,
    ScoreSpec,
    check_config,
    parse_curriculum,
    parse_score,
)
from scaling.data.tokens import TokenSplits
from scaling.errors import UsageError
from scaling.io import atomic_write_bytes
from scaling.paths import cache_dir

__all__ = [
    "PACINGS",
    "PACING_FUNCTIONS",
    "SCORE_KINDS",
    "UNITS",
    "CompetenceSampler",
    "Documents",
    "ModelScoring",
    "ScoreSpec",
    "check_config",
    "compute_scores",
    "difficulty_order",
    "documents",
    "empirical_cdf",
    "exp_pacing",
    "length_scores",
    "linear_pacing",
    "load_scores",
    "make_sampler",
    "parse_curriculum",
    "parse_score",
    "rarity_scores",
    "root_pacing",
    "scores_path",
    "step_pacing",
    "token_counts",
]

STEP_STAGES = 4  # stages of the baby-steps schedule
ROOT_POWER = 2  # p of root pacing
SALT = 0x5EED_C0DE  # mixes the curriculum's draws apart from other uses of (seed, step)
_TIE_SALT = 0x71E
_CACHE_VERSION = 1
_CHUNK_TOKENS = 1 << 23  # tokens per chunk when scanning the training split


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


# ----------------------------------------------------------------------------- documents and window sums


def _chunks(n_windows: int, seq_len: int):
    step = max(1, _CHUNK_TOKENS // seq_len)
    for a in range(0, n_windows, step):
        yield a, min(n_windows, a + step)


def _window_sums(token_values: Callable[[int, int], np.ndarray], n_windows: int, seq_len: int) -> np.ndarray:
    """Sum of a per-token value over each window's seq_len + 1 tokens; ``token_values(s, e)``
    gives the values of tokens [s, e)."""
    out = np.empty(n_windows, np.float64)
    for a, b in _chunks(n_windows, seq_len):
        v = np.asarray(token_values(a * seq_len, b * seq_len + 1), np.float64)
        out[a:b] = v[:-1].reshape(b - a, seq_len).sum(axis=1) + v[seq_len::seq_len]
    return out


@dataclass(frozen=True)
class Documents:
    """Document boundaries of a token stream: end-of-text positions and non-EOT lengths."""

    eot_pos: np.ndarray  # int64, increasing
    lengths: np.ndarray  # int64 tokens per document, end-of-text not counted
    n_tokens: int

    @property
    def n_docs(self) -> int:
        return len(self.lengths)

    def doc_of(self, positions) -> np.ndarray:
        """Index of the document holding each token position (an end-of-text is in the document it ends)."""
        return np.searchsorted(self.eot_pos, np.asarray(positions, np.int64), side="left")

    def doc_ids(self, tokens: np.ndarray, s: int, e: int, eot: int) -> np.ndarray:
        is_eot = np.asarray(tokens[s:e]) == eot
        first = np.searchsorted(self.eot_pos, s, side="left")
        return first + np.cumsum(is_eot) - is_eot


def documents(tokens: np.ndarray, eot: int) -> Documents:
    n = len(tokens)
    pos = [np.flatnonzero(np.asarray(tokens[a : a + _CHUNK_TOKENS]) == eot) + a for a in range(0, n, _CHUNK_TOKENS)]
    eot_pos = np.concatenate(pos).astype(np.int64) if pos else np.zeros(0, np.int64)
    trailing = len(eot_pos) == 0 or eot_pos[-1] < n - 1
    starts = np.concatenate([[0], eot_pos + 1])
    ends = np.concatenate([eot_pos, [n]])
    k = len(eot_pos) + int(trailing)
    return Documents(eot_pos, (ends[:k] - starts[:k]).astype(np.int64), n)


def _per_doc_to_windows(values: np.ndarray, docs: Documents, n_windows: int, seq_len: int) -> np.ndarray:
    return np.asarray(values, np.float64)[docs.doc_of(np.arange(n_windows, dtype=np.int64) * seq_len)]


# ----------------------------------------------------------------------------- scores


def length_scores(tokens: np.ndarray, seq_len: int, eot: int, unit: str = "sequence") -> np.ndarray:
    n_windows = (len(tokens) - 1) // seq_len
    docs = documents(tokens, eot)
    if unit == "document":
        return _per_doc_to_windows(docs.lengths, docs, n_windows, seq_len)
    lengths = docs.lengths.astype(np.float64)
    sums = _window_sums(lambda s, e: lengths[docs.doc_ids(tokens, s, e, eot)], n_windows, seq_len)
    return sums / (seq_len + 1)


def token_counts(tokens: np.ndarray, n_vocab: int) -> np.ndarray:
    counts = np.zeros(n_vocab, np.int64)
    for a in range(0, len(tokens), _CHUNK_TOKENS):
        counts += np.bincount(np.asarray(tokens[a : a + _CHUNK_TOKENS]), minlength=n_vocab)[:n_vocab]
    return counts


def rarity_scores(tokens: np.ndarray, seq_len: int, n_vocab: int, eot: int, unit: str = "sequence") -> np.ndarray:
    """Minus the sum of log relative frequencies (training-split counts) of the tokens."""
    counts = token_counts(tokens, n_vocab)
    with np.errstate(divide="ignore"):
        cost = -np.log(counts / counts.sum())  # inf only for ids absent from the split (never looked up)
    n_windows = (len(tokens) - 1) // seq_len
    if unit == "sequence":
        return _window_sums(lambda s, e: cost[np.asarray(tokens[s:e])], n_windows, seq_len)
    docs = documents(tokens, eot)
    per_doc = np.zeros(docs.n_docs, np.float64)
    for a in range(0, len(tokens), _CHUNK_TOKENS):
        e = min(len(tokens), a + _CHUNK_TOKENS)
        per_doc += np.bincount(
            docs.doc_ids(tokens, a, e, eot), weights=cost[np.asarray(tokens[a:e])], minlength=docs.n_docs
        )
    return _per_doc_to_windows(per_doc, docs, n_windows, seq_len)


# ----------------------------------------------------------------------------- the score cache


@dataclass(frozen=True)
class ModelScoring:
    """How scores of kind ``model`` are computed, by a layer that can load and run a model."""

    identity: Callable[[str], dict]
    """reference run directory -> what its scores depend on (a part of the cache key); UsageError
    when it is not a usable reference."""
    scores: Callable[[TokenSplits, int, ScoreSpec, bool], np.ndarray]
    """(splits, seq_len, spec, progress) -> the score of every training window."""


def _model_scoring(spec: ScoreSpec, model_scoring: ModelScoring | None) -> ModelScoring:
    if model_scoring is None:
        raise UsageError(
            f"data.curriculum_score {spec.describe()} needs a reference model's scores, which this "
            "caller cannot compute"
        )
    return model_scoring


def compute_scores(
    splits: TokenSplits, seq_len: int, spec: ScoreSpec, progress: bool = True, model_scoring: ModelScoring | None = None
) -> np.ndarray:
    """Difficulty score (higher = harder) of every training window; no cache."""
    eot = int(splits.manifest["eot"])
    if spec.kind == "length":
        return length_scores(splits.train, seq_len, eot, spec.unit)
    if spec.kind == "rarity":
        return rarity_scores(splits.train, seq_len, splits.n_vocab, eot, spec.unit)
    return _model_scoring(spec, model_scoring).scores(splits, seq_len, spec, progress)


def _token_key(splits: TokenSplits) -> str:
    fn = getattr(splits.train, "filename", None)
    if fn:
        return "cache:" + Path(fn).parent.name
    return "sha:" + hashlib.sha256(np.ascontiguousarray(splits.train).tobytes()).hexdigest()[:20]


def scores_path(splits: TokenSplits, seq_len: int, spec: ScoreSpec, model_scoring: ModelScoring | None = None) -> Path:
    ident = _model_scoring(spec, model_scoring).identity(spec.ref) if spec.kind == "model" else None
    key = json.dumps(
        [_CACHE_VERSION, _token_key(splits), splits.manifest, spec.kind, spec.unit, seq_len, ident],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "curriculum" / f"{spec.kind}-{spec.unit}-L{seq_len}-{digest}.npy"


def load_scores(
    splits: TokenSplits, seq_len: int, spec: ScoreSpec, progress: bool = True, model_scoring: ModelScoring | None = None
) -> np.ndarray:
    """The cached scores of every training window (computed and cached the first time)."""
    path = scores_path(splits, seq_len, spec, model_scoring)
    n_windows = (len(splits.train) - 1) // seq_len
    if path.is_file():
        try:
            scores = np.load(path)
            if scores.shape == (n_windows,):
                return scores
        except (OSError, ValueError):
            pass  # a torn file: recompute
    scores = compute_scores(splits, seq_len, spec, progress=progress, model_scoring=model_scoring)
    if not np.all(np.isfinite(scores)):
        raise UsageError(f"curriculum score {spec.describe()} is not finite for every training window")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, scores)
    atomic_write_bytes(path, buf.getvalue())
    return scores


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
