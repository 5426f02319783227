"""Curriculum learning: difficulty scores, pacing (competence) functions and a competence sampler.

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
- ``model:<run dir>``: the mean next-token loss (nats) of a reference checkpoint of
  ``experiments.train`` (the run's latest restorable checkpoint) on the window. It needs the
  same tokenizer, a vocabulary covering the corpus's ids and a context of at least
  ``model.seq_len``. Every training window is scored (no cap: one forward pass over the
  training split, i.e. 2 N_ref FLOPs per token, a third of what training the reference on
  one epoch costs), in batches with a jitted function, once; then it is cached.

With ``doc:`` every window gets the score of the document it *starts* in: the document's
length, minus the sum of log frequencies over the document's tokens, or the mean of the
model scores of the windows starting in it.

Scores are computed once and cached as ``.npy`` under ``$SCALING_CACHE_DIR/curriculum/``,
keyed by the token cache (its directory key and manifest), the score kind and unit,
``seq_len`` and, for model scores, the reference run (path, config hash, latest checkpoint).

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

**Analysis.** :func:`arm_differences` gives, per model size and token budget, the loss
difference of every arm to the ``none`` arm with a bootstrap interval over validation
batches (the final checkpoints re-evaluated on the fixed validation batches; paired
between arms) and over seeds (when there are several); the CLI::

    python -m scaling.curriculum --results DIR/results.csv [--baseline none] [--bootstrap 2000]
        [--resample auto|batches|seeds] [--runs DIR/runs] [--out differences.json]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from scaling.errors import UsageError, exit_on_usage_error

PACINGS = ("linear", "root", "step", "exp")
SCORE_KINDS = ("length", "rarity", "model")
UNITS = {"seq": "sequence", "doc": "document"}
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
    return _pace(t, T, c0, (t_ * (1 - c0 ** p) / T + c0 ** p) ** (1.0 / p))


def step_pacing(t, T: float, c0: float, n_stages: int = STEP_STAGES):
    """Baby steps: ``c0 + (1 - c0) floor(n_stages t / T) / n_stages`` (n_stages + 1 levels)."""
    t_ = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return _pace(t, T, c0, c0 + (1 - c0) * np.floor(n_stages * t_ / T) / n_stages)


def exp_pacing(t, T: float, c0: float):
    """Exponential (geometric) growth from c0 to 1: ``c0^(1 - t/T)``."""
    t_ = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return _pace(t, T, c0, c0 ** (1.0 - t_ / T))


PACING_FUNCTIONS: dict[str, Callable] = {"linear": linear_pacing, "root": root_pacing, "step": step_pacing,
                                         "exp": exp_pacing}


# ----------------------------------------------------------------------------- config values


@dataclass(frozen=True)
class ScoreSpec:
    kind: str  # length | rarity | model
    unit: str  # sequence | document
    ref: str = ""  # model: the reference run directory

    def describe(self) -> str:
        return f"{self.kind}{':' + self.ref if self.ref else ''} per {self.unit}"


def parse_curriculum(text: str) -> tuple[str, bool]:
    """``data.curriculum`` -> (pacing name, anti); UsageError on anything else ('' is not a pacing)."""
    s = str(text).strip()
    anti = s.startswith("anti-")
    name = s[5:] if anti else s
    if name not in PACINGS:
        raise UsageError(f"data.curriculum must be '' (none), one of {', '.join(PACINGS)} or anti-<one of them>, "
                         f"got {text!r}")
    return name, anti


def parse_score(text: str) -> ScoreSpec:
    """``data.curriculum_score`` = ``[seq:|doc:](length | rarity | model:<run dir>)``."""
    s = str(text).strip()
    unit = "sequence"
    head = s.split(":", 1)[0]
    if head in UNITS and ":" in s:
        unit, s = UNITS[head], s.split(":", 1)[1]
    kind, sep, ref = s.partition(":")
    if kind not in SCORE_KINDS or (kind == "model") != bool(ref.strip()) or (kind != "model" and sep):
        raise UsageError(f"data.curriculum_score must be [seq:|doc:]length, rarity or model:<run dir>, got {text!r}")
    return ScoreSpec(kind, unit, ref.strip())


def check_config(data) -> None:
    """Validate a DataConfig's curriculum fields (UsageError naming the field)."""
    if data.curriculum:
        parse_curriculum(data.curriculum)
    parse_score(data.curriculum_score)
    if not 0.0 < data.curriculum_horizon <= 1.0:
        raise UsageError(f"data.curriculum_horizon must be in (0, 1], got {data.curriculum_horizon}")
    if not 0.0 < data.curriculum_c0 <= 1.0:
        raise UsageError(f"data.curriculum_c0 must be in (0, 1], got {data.curriculum_c0}")


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
    pos = [np.flatnonzero(np.asarray(tokens[a:a + _CHUNK_TOKENS]) == eot) + a for a in range(0, n, _CHUNK_TOKENS)]
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
        counts += np.bincount(np.asarray(tokens[a:a + _CHUNK_TOKENS]), minlength=n_vocab)[:n_vocab]
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
        per_doc += np.bincount(docs.doc_ids(tokens, a, e, eot), weights=cost[np.asarray(tokens[a:e])],
                               minlength=docs.n_docs)
    return _per_doc_to_windows(per_doc, docs, n_windows, seq_len)


def _latest_step(run_dir: Path) -> int | None:
    d = run_dir / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()] if d.is_dir() else []
    return max(steps) if steps else None


def reference_identity(run_dir: str | Path) -> dict:
    """What a model score depends on: the run directory, its config hash and latest checkpoint."""
    from scaling import config as config_lib

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"curriculum reference {run_dir} is not a training run directory (no config.yaml)")
    step = _latest_step(run_dir)
    if step is None:
        raise UsageError(f"curriculum reference {run_dir} has no checkpoint under {run_dir / 'checkpoints'}")
    cfg = config_lib.from_dict(config_lib.load_yaml(run_dir / "config.yaml"))
    return {"run_dir": str(run_dir), "config_hash": cfg.identity_hash(), "latest_step": step,
            "tokenizer": cfg.data.tokenizer, "corpus": cfg.data.corpus, "seq_len": cfg.model.seq_len,
            "vocab_size": cfg.model.vocab_size}


def _host(tree):
    import jax
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if hasattr(a, "addressable_data")
                        else np.asarray(a), tree)


@functools.lru_cache(maxsize=8)
def _row_loss_fn(model_cfg):
    """Jitted (params, batch_bt) -> per-row mean next-token loss, per model config."""
    import jax
    import optax

    from scaling.model import GPT

    model = GPT(model_cfg)

    @jax.jit
    def f(params, batch_bt):
        logits_btv = model.apply({"params": params}, batch_bt[:, :-1], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits_btv, batch_bt[:, 1:]).mean(axis=1)

    return f


def model_scores(tokens: np.ndarray, seq_len: int, eot: int, n_vocab: int, tokenizer: str, ref_dir: str | Path,
                 unit: str = "sequence", batch_windows: int = 128, progress: bool = True,
                 corpus: str | None = None) -> np.ndarray:
    """Mean next-token loss of the reference run's latest checkpoint on every window."""
    ident = reference_identity(ref_dir)
    if ident["tokenizer"] != tokenizer:
        raise UsageError(f"curriculum reference {ident['run_dir']} uses tokenizer {ident['tokenizer']!r}, "
                         f"this run {tokenizer!r}")
    if tokenizer.startswith("bpe:") and corpus is not None and ident["corpus"] != corpus:
        raise UsageError(f"curriculum reference {ident['run_dir']} trained its {tokenizer} tokenizer on corpus "
                         f"{ident['corpus']!r}, this run on {corpus!r}: the token ids differ")
    if ident["seq_len"] < seq_len:
        raise UsageError(f"curriculum reference {ident['run_dir']} has model.seq_len {ident['seq_len']}, "
                         f"shorter than this run's {seq_len}")
    if ident["vocab_size"] and ident["vocab_size"] < n_vocab:
        raise UsageError(f"curriculum reference {ident['run_dir']} has model.vocab_size {ident['vocab_size']}, "
                         f"fewer than the tokenizer's {n_vocab} ids")
    from tqdm import tqdm

    from scaling.train import load_run

    cfg, params = load_run(ident["run_dir"])
    params = _host(params)
    f = _row_loss_fn(cfg.model)
    n_windows = (len(tokens) - 1) // seq_len
    out = np.empty(n_windows, np.float64)
    offs = np.arange(seq_len + 1)
    for a in tqdm(range(0, n_windows, batch_windows), disable=not progress, desc="curriculum model scores",
                  unit="batch", file=sys.stderr, leave=False, mininterval=2.0):
        ids = np.arange(a, a + batch_windows) % n_windows  # the last batch wraps: one compiled shape
        batch = np.asarray(tokens[(ids * seq_len)[:, None] + offs], np.int32)
        k = min(batch_windows, n_windows - a)
        out[a:a + k] = np.asarray(f(params, batch), np.float64)[:k]
    if unit == "document":
        docs = documents(tokens, eot)
        start_doc = docs.doc_of(np.arange(n_windows, dtype=np.int64) * seq_len)
        sums = np.bincount(start_doc, weights=out, minlength=docs.n_docs)
        counts = np.maximum(np.bincount(start_doc, minlength=docs.n_docs), 1)
        out = (sums / counts)[start_doc]
    return out


def compute_scores(splits, seq_len: int, spec: ScoreSpec, progress: bool = True) -> np.ndarray:
    """Difficulty score (higher = harder) of every training window; no cache."""
    eot = int(splits.manifest["eot"])
    if spec.kind == "length":
        return length_scores(splits.train, seq_len, eot, spec.unit)
    if spec.kind == "rarity":
        return rarity_scores(splits.train, seq_len, splits.n_vocab, eot, spec.unit)
    return model_scores(splits.train, seq_len, eot, splits.n_vocab, str(splits.manifest.get("tokenizer")),
                        spec.ref, spec.unit, progress=progress, corpus=splits.manifest.get("corpus"))


def _token_key(splits) -> str:
    fn = getattr(splits.train, "filename", None)
    if fn:
        return "cache:" + Path(fn).parent.name
    return "sha:" + hashlib.sha256(np.ascontiguousarray(splits.train).tobytes()).hexdigest()[:20]


def scores_path(splits, seq_len: int, spec: ScoreSpec) -> Path:
    from scaling.paths import cache_dir

    ident = reference_identity(spec.ref) if spec.kind == "model" else None
    key = json.dumps([_CACHE_VERSION, _token_key(splits), splits.manifest, spec.kind, spec.unit, seq_len, ident],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "curriculum" / f"{spec.kind}-{spec.unit}-L{seq_len}-{digest}.npy"


def load_scores(splits, seq_len: int, spec: ScoreSpec, progress: bool = True) -> np.ndarray:
    """The cached scores of every training window (computed and cached the first time)."""
    path = scores_path(splits, seq_len, spec)
    n_windows = (len(splits.train) - 1) // seq_len
    if path.is_file():
        try:
            scores = np.load(path)
            if scores.shape == (n_windows,):
                return scores
        except (OSError, ValueError):
            pass  # a torn file: recompute
    scores = compute_scores(splits, seq_len, spec, progress=progress)
    if not np.all(np.isfinite(scores)):
        raise UsageError(f"curriculum score {spec.describe()} is not finite for every training window")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, scores)
    os.replace(tmp, path)
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

    def __init__(self, order: np.ndarray, pacing: Callable, horizon_steps: float, c0: float, seed: int,
                 batch_size: int):
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


def make_sampler(cfg, splits, progress: bool | None = None) -> CompetenceSampler:
    """The competence sampler of a run config (``cfg.data.curriculum`` set). Prints one line
    describing it on stderr (and a progress bar while scoring with a model when
    ``cfg.train.progress``) unless ``progress`` is False."""
    from scaling.train import steps_for

    check_config(cfg.data)
    pacing_name, anti = parse_curriculum(cfg.data.curriculum)
    spec = parse_score(cfg.data.curriculum_score)
    seq_len = cfg.model.seq_len
    if (len(splits.train) - 1) // seq_len < 1:
        raise UsageError(f"the training split ({len(splits.train)} tokens) is shorter than one sequence "
                         f"of model.seq_len + 1 = {seq_len + 1} tokens")
    scores = load_scores(splits, seq_len, spec, progress=cfg.train.progress if progress is None else progress)
    order = difficulty_order(scores, cfg.train.seed)
    if anti:
        order = order[::-1]
    total = steps_for(cfg)
    horizon = cfg.data.curriculum_horizon * total
    if progress is not False:
        const = " (constant: windows enter in a random order)" if np.ptp(scores) == 0 else ""
        print(f"curriculum: {cfg.data.curriculum} pacing on {spec.describe()}{const}, c0 {cfg.data.curriculum_c0:g}, "
              f"full competence at step {horizon:g} of {total}; {len(scores)} windows", file=sys.stderr)
    return CompetenceSampler(order, PACING_FUNCTIONS[pacing_name], horizon, cfg.data.curriculum_c0,
                             cfg.train.seed, cfg.train.batch_size)


# ----------------------------------------------------------------------------- analysis: arms vs none


def _interval(reps: np.ndarray, ci: float) -> tuple[float, float]:
    a = (1 - ci) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def arm_differences(df, *, baseline: str = "none", arm_col: str = "arm", size_col: str = "n_params",
                    tokens_col: str = "tokens", loss_col: str = "val_loss", seed_col: str = "seed",
                    id_col: str = "run_id", per_batch: dict | None = None, n_boot: int = 2000, ci: float = 0.95,
                    rng_seed: int = 0):
    """Per (model size, tokens) and arm: the loss difference ``arm - baseline`` (mean over seeds)
    with a percentile bootstrap interval.

    ``per_batch`` (run id -> per-validation-batch losses, the same batches for every run):
    resample validation batches (the same draw for both arms: a paired bootstrap) and, with
    2+ seeds, seeds too; without it, seeds only (2+ needed; else no interval). Seeds are
    paired between arms when both have the same seeds. Returns a DataFrame, one row per
    (size, tokens, arm != baseline)."""
    import pandas as pd

    missing = [c for c in (arm_col, size_col, tokens_col, loss_col) if c not in df.columns]
    if missing:
        raise UsageError(f"results need column(s) {missing}; columns: {list(df.columns)}")
    if "status" in df.columns:
        df = df[df["status"].astype(str).str.strip() == "completed"]
    df = df.assign(**{arm_col: df[arm_col].astype(str)})
    if baseline not in set(df[arm_col]):
        raise UsageError(f"no completed run of the baseline arm {baseline!r} (arms: {sorted(set(df[arm_col]))})")
    if seed_col not in df.columns:
        df = df.assign(**{seed_col: 0})
    rng = np.random.default_rng(rng_seed)
    rows = []
    for (size, tokens), cell in df.groupby([size_col, tokens_col], sort=True):
        base = cell[cell[arm_col] == baseline].sort_values(seed_col)
        for arm in sorted(set(cell[arm_col]) - {baseline}):
            other = cell[cell[arm_col] == arm].sort_values(seed_col)
            row = {"arm": arm, size_col: size, tokens_col: tokens, "loss": float(other[loss_col].mean()),
                   "loss_" + baseline: float(base[loss_col].mean()) if len(base) else math.nan,
                   "n_seeds": len(other), "n_seeds_" + baseline: len(base)}
            if not len(base):
                rows.append({**row, "diff": math.nan, "lo": math.nan, "hi": math.nan, "resampled": "none"})
                continue
            row["diff"] = row["loss"] - row["loss_" + baseline]
            paired = list(other[seed_col]) == list(base[seed_col])
            ids_a = list(other[id_col]) if id_col in other.columns else []
            ids_b = list(base[id_col]) if id_col in base.columns else []
            have_batches = bool(per_batch is not None and ids_a and all(i in per_batch for i in ids_a + ids_b))
            if have_batches:
                A = np.stack([np.asarray(per_batch[i], np.float64) for i in ids_a])  # (seeds, batches)
                B = np.stack([np.asarray(per_batch[i], np.float64) for i in ids_b])
                reps = _boot_batches(A, B, paired, n_boot, rng)
                how = "batches" + ("+seeds" if max(len(A), len(B)) > 1 else "")
            elif len(other) > 1 or len(base) > 1:
                a, b = other[loss_col].to_numpy(float), base[loss_col].to_numpy(float)
                reps = _boot_seeds(a, b, paired, n_boot, rng)
                how = "seeds"
            else:
                reps, how = None, "none"
            lo, hi = _interval(reps, ci) if reps is not None else (math.nan, math.nan)
            rows.append({**row, "lo": lo, "hi": hi, "resampled": how})
    return pd.DataFrame(rows)


def _boot_seeds(a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int, rng) -> np.ndarray:
    if paired:
        d = a - b
        return d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    return (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1))


def _boot_batches(A: np.ndarray, B: np.ndarray, paired: bool, n_boot: int, rng) -> np.ndarray:
    if A.shape[1] != B.shape[1]:
        raise UsageError(f"runs were evaluated on different numbers of validation batches ({A.shape[1]} and "
                         f"{B.shape[1]}); a paired bootstrap needs the same batches")
    m = A.shape[1]
    bidx = rng.integers(0, m, (n_boot, m))  # one batch draw per replicate, shared by both arms
    a_rep = np.take_along_axis(A[:, None, :], bidx[None], axis=2).mean(axis=2)  # (seeds, n_boot)
    b_rep = np.take_along_axis(B[:, None, :], bidx[None], axis=2).mean(axis=2)
    if paired and len(A) > 1:
        s = rng.integers(0, len(A), (n_boot, len(A)))
        d = a_rep - b_rep
        return np.take_along_axis(d.T, s, axis=1).mean(axis=1)
    if len(A) > 1:
        a_rep = np.take_along_axis(a_rep.T, rng.integers(0, len(A), (n_boot, len(A))), axis=1).T
    if len(B) > 1:
        b_rep = np.take_along_axis(b_rep.T, rng.integers(0, len(B), (n_boot, len(B))), axis=1).T
    return a_rep.mean(axis=0) - b_rep.mean(axis=0)


def val_batch_losses(run_dir: str | Path) -> np.ndarray:
    """Per-batch validation losses of a run's latest checkpoint on its fixed validation batches
    (``train.eval_batches`` of them; their mean is the run's ``val_loss``)."""
    from scaling.data import Batches, load_tokens
    from scaling.train import load_run

    cfg, params = load_run(run_dir)
    params = _host(params)
    splits = load_tokens(cfg.data)
    batches = Batches(splits, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)
    f = _row_loss_fn(cfg.model)
    return np.array([float(np.mean(np.asarray(f(params, b)))) for b in batches.val_batches(cfg.train.eval_batches)])


def report(table) -> str:
    if not len(table):
        return "no arm to compare with the baseline"
    base = [c for c in table.columns if c.startswith("loss_")][0]
    lines = [f"{'arm':>10} {'n_params':>10} {'tokens':>10} {'loss':>8} {base:>10} {'diff':>9}  interval (resampled)"]
    for _, r in table.iterrows():
        iv = "-" if not np.isfinite(r["lo"]) else f"[{r['lo']:+.4f}, {r['hi']:+.4f}]"
        lines.append(f"{r['arm']:>10} {int(r['n_params']):>10} {int(r['tokens']):>10} {r['loss']:8.4f} "
                     f"{r[base]:10.4f} {r['diff']:+9.4f}  {iv} ({r['resampled']})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scaling.curriculum",
                                description="Per model size: the loss difference of every arm of a sweep to the "
                                            "baseline arm, with a bootstrap interval.")
    p.add_argument("--results", required=True, help="results.csv of a sweep with arms")
    p.add_argument("--baseline", default="none", help="the arm compared against (default: none)")
    p.add_argument("--arm-col", default="arm")
    p.add_argument("--loss-col", default="val_loss")
    p.add_argument("--n-col", default="n_params")
    p.add_argument("--d-col", default="tokens")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--resample", choices=("auto", "batches", "seeds"), default="auto",
                   help="batches: re-evaluate every run's final checkpoint on its validation batches and resample "
                        "them (paired between arms; seeds too when several); seeds: resample seeds only; auto: "
                        "batches when the run directories are there (default)")
    p.add_argument("--runs", default=None, help="directory of the runs (default: runs/ beside --results)")
    p.add_argument("--out", default=None, help="write the table as JSON here (default: JSON to stdout, report to "
                                                "stderr)")
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    import pandas as pd

    path = Path(args.results)
    if not path.is_file():
        raise UsageError(f"results file not found: {path}")
    if args.bootstrap < 1 or not 0 < args.ci < 1:
        raise UsageError("--bootstrap must be >= 1 and --ci in (0, 1)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    cols = dict(arm_col=args.arm_col, size_col=args.n_col, tokens_col=args.d_col, loss_col=args.loss_col)
    arm_differences(df, baseline=args.baseline, n_boot=1, **cols)  # validate before any compute
    runs_dir = Path(args.runs) if args.runs else path.parent / "runs"
    per_batch, checks = None, {}
    done = df[df["status"].astype(str).str.strip() == "completed"] if "status" in df.columns else df
    missing = ([r for r in done["run_id"] if not (runs_dir / str(r) / "config.yaml").is_file()]
               if "run_id" in df.columns else ["(no run_id column)"])
    want = args.resample == "batches" or (args.resample == "auto" and not missing)
    if want:
        if "run_id" not in df.columns:
            raise UsageError(f"--resample batches needs a run_id column in {path}")
        if missing:
            raise UsageError(f"run directory {runs_dir / str(missing[0])} not found (--runs)")
        per_batch = {}
        for rid, loss in zip(done["run_id"], done[args.loss_col]):
            per_batch[rid] = val_batch_losses(runs_dir / str(rid))
            checks[rid] = float(np.mean(per_batch[rid]) - loss) if args.loss_col == "val_loss" else None
    table = arm_differences(df, baseline=args.baseline, per_batch=per_batch, n_boot=args.bootstrap, ci=args.ci,
                            **cols)
    text = report(table)
    worst = max((abs(v) for v in checks.values() if v is not None), default=None)
    if worst is not None:
        text += f"\n(re-evaluated validation batches match results' val_loss to {worst:.2g})"
    out = {"baseline": args.baseline, "ci": args.ci, "bootstrap": args.bootstrap, "results": str(path),
           "rows": json.loads(table.to_json(orient="records")),
           "val_loss_recheck_max_abs": worst}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(text)
    else:
        print(json.dumps(out, indent=2))
        print(text, file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
