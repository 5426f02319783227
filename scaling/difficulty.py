"""Curriculum difficulty scores that need a model: ``data.curriculum_score = [seq:|doc:]model:<run dir>``.

The score of a training window is the mean next-token loss (nats) of a reference checkpoint of
``experiments.train`` (the run's latest restorable checkpoint) on it. The reference needs the
same tokenizer, a vocabulary covering the corpus's ids and a context of at least
``model.seq_len``. Every training window is scored (no cap: one forward pass over the training
split, i.e. 2 N_ref FLOPs per token, a third of what training the reference on one epoch
costs), in batches with a jitted function, once; then it is cached by
:mod:`scaling.data.curriculum_scores`, keyed by the reference run (path, config hash, latest
checkpoint) too. With ``doc:`` a window gets the mean of the model scores of the windows
starting in its document.

:data:`MODEL_SCORING` is what a training run is given to compute such scores;
:func:`load_scores`, :func:`compute_scores`, :func:`scores_path` and :func:`make_sampler` are
those of :mod:`scaling.data.curriculum_scores` and :mod:`scaling.data.curriculum` with it
(every score kind), and ``make_sampler`` over the run's steps. :func:`val_batch_losses`
re-evaluates a run on its validation batches (for the differences between curriculum arms,
``python -m analysis.curriculum``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from scaling import config_parse
from scaling.config import Config, ModelConfig
from scaling.curriculum_config import ScoreSpec
from scaling.data import Batches, TokenSplits, curriculum, curriculum_scores, load_tokens
from scaling.data.curriculum import CompetenceSampler
from scaling.data.curriculum_scores import ModelScoring, documents
from scaling.errors import UsageError
from scaling.evaluation import token_nll
from scaling.io import load_yaml
from scaling.model import GPT
from scaling.train import load_run, steps_for


def _latest_step(run_dir: Path) -> int | None:
    d = run_dir / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()] if d.is_dir() else []
    return max(steps) if steps else None


def reference_identity(run_dir: str | Path) -> dict:
    """What a model score depends on: the run directory, its config hash and latest checkpoint."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"curriculum reference {run_dir} is not a training run directory (no config.yaml)")
    step = _latest_step(run_dir)
    if step is None:
        raise UsageError(f"curriculum reference {run_dir} has no checkpoint under {run_dir / 'checkpoints'}")
    cfg = config_parse.from_dict(load_yaml(run_dir / "config.yaml"))
    return {
        "run_dir": str(run_dir),
        "config_hash": cfg.identity_hash(),
        "latest_step": step,
        "tokenizer": cfg.data.tokenizer,
        "corpus": cfg.data.corpus,
        "seq_len": cfg.model.seq_len,
        "vocab_size": cfg.model.vocab_size,
    }


def _host(tree):
    return jax.tree.map(
        lambda a: np.asarray(a.addressable_data(0)) if hasattr(a, "addressable_data") else np.asarray(a), tree
    )


@functools.lru_cache(maxsize=8)
def _row_loss_fn(model_cfg: ModelConfig):
    """Jitted (params, batch_bt) -> per-row mean next-token loss, per model config."""
    model = GPT(model_cfg)

    @jax.jit
    def f(params, batch_bt):
        return token_nll(model, params, batch_bt).mean(axis=1)

    return f


def model_scores(
    tokens: np.ndarray,
    seq_len: int,
    eot: int,
    n_vocab: int,
    tokenizer: str,
    ref_dir: str | Path,
    unit: str = "sequence",
    batch_windows: int = 128,
    progress: bool = True,
    corpus: str | None = None,
) -> np.ndarray:
    """Mean next-token loss of the reference run's latest checkpoint on every window."""
    ident = reference_identity(ref_dir)
    if ident["tokenizer"] != tokenizer:
        raise UsageError(
            f"curriculum reference {ident['run_dir']} uses tokenizer {ident['tokenizer']!r}, this run {tokenizer!r}"
        )
    if tokenizer.startswith("bpe:") and corpus is not None and ident["corpus"] != corpus:
        raise UsageError(
            f"curriculum reference {ident['run_dir']} trained its {tokenizer} tokenizer on corpus "
            f"{ident['corpus']!r}, this run on {corpus!r}: the token ids differ"
        )
    if ident["seq_len"] < seq_len:
        raise UsageError(
            f"curriculum reference {ident['run_dir']} has model.seq_len {ident['seq_len']}, "
            f"shorter than this run's {seq_len}"
        )
    if ident["vocab_size"] and ident["vocab_size"] < n_vocab:
        raise UsageError(
            f"curriculum reference {ident['run_dir']} has model.vocab_size {ident['vocab_size']}, "
            f"fewer than the tokenizer's {n_vocab} ids"
        )
    cfg, params = load_run(ident["run_dir"])
    params = _host(params)
    f = _row_loss_fn(cfg.model)
    n_windows = (len(tokens) - 1) // seq_len
    out = np.empty(n_windows, np.float64)
    offs = np.arange(seq_len + 1)
    for a in tqdm(
        range(0, n_windows, batch_windows),
        disable=not progress,
        desc="curriculum model scores",
        unit="batch",
        file=sys.stderr,
        leave=False,
        mininterval=2.0,
    ):
        ids = np.arange(a, a + batch_windows) % n_windows  # the last batch wraps: one compiled shape
        batch = np.asarray(tokens[(ids * seq_len)[:, None] + offs], np.int32)
        k = min(batch_windows, n_windows - a)
        out[a : a + k] = np.asarray(f(params, batch), np.float64)[:k]
    if unit == "document":
        docs = documents(tokens, eot)
        start_doc = docs.doc_of(np.arange(n_windows, dtype=np.int64) * seq_len)
        sums = np.bincount(start_doc, weights=out, minlength=docs.n_docs)
        counts = np.maximum(np.bincount(start_doc, minlength=docs.n_docs), 1)
        out = (sums / counts)[start_doc]
    return out


def _split_model_scores(splits: TokenSplits, seq_len: int, spec: ScoreSpec, progress: bool) -> np.ndarray:
    return model_scores(
        splits.train,
        seq_len,
        int(splits.manifest["eot"]),
        splits.n_vocab,
        str(splits.manifest.get("tokenizer")),
        spec.ref,
        spec.unit,
        progress=progress,
        corpus=splits.manifest.get("corpus"),
    )


MODEL_SCORING = ModelScoring(identity=reference_identity, scores=_split_model_scores)
"""Scores of kind ``model`` by a reference run's latest checkpoint."""


def compute_scores(splits: TokenSplits, seq_len: int, spec: ScoreSpec, progress: bool = True) -> np.ndarray:
    """Difficulty score (higher = harder) of every training window, of any kind; no cache."""
    return curriculum_scores.compute_scores(splits, seq_len, spec, progress, model_scoring=MODEL_SCORING)


def scores_path(splits: TokenSplits, seq_len: int, spec: ScoreSpec) -> Path:
    return curriculum_scores.scores_path(splits, seq_len, spec, model_scoring=MODEL_SCORING)


def load_scores(splits: TokenSplits, seq_len: int, spec: ScoreSpec, progress: bool = True) -> np.ndarray:
    """The cached scores of every training window, of any kind (computed and cached the first time)."""
    return curriculum_scores.load_scores(splits, seq_len, spec, progress, model_scoring=MODEL_SCORING)


def make_sampler(cfg: Config, splits: TokenSplits, progress: bool | None = None) -> CompetenceSampler:
    """The competence sampler of a run config (``cfg.data.curriculum`` set) over the run's steps."""
    return curriculum.make_sampler(cfg, splits, steps_for(cfg), progress, model_scoring=MODEL_SCORING)


def val_batch_losses(run_dir: str | Path) -> np.ndarray:
    """Per-batch validation losses of a run's latest checkpoint on its fixed validation batches
    (``train.eval_batches`` of them; their mean is the run's ``val_loss``)."""
    cfg, params = load_run(run_dir)
    params = _host(params)
    splits = load_tokens(cfg.data)
    batches = Batches(splits, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)
    f = _row_loss_fn(cfg.model)
    return np.array([float(np.mean(np.asarray(f(params, b)))) for b in batches.val_batches(cfg.train.eval_batches)])
