"""Difficulty scores of the training windows for a curriculum (:mod:`scaling.data.curriculum`),
computed from the tokens or, for a model's scores, by a caller that can run one.

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
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.curriculum_config import ScoreSpec
from scaling.data.tokens import TokenSplits
from scaling.errors import UsageError
from scaling.io import atomic_write_bytes
from scaling.paths import cache_dir

__all__ = [
    "Documents",
    "ModelScoring",
    "compute_scores",
    "documents",
    "length_scores",
    "load_scores",
    "rarity_scores",
    "scores_path",
    "token_counts",
]

_CACHE_VERSION = 1
_CHUNK_TOKENS = 1 << 23  # tokens per chunk when scanning the training split


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
