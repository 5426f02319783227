"""A sweep's count-model baseline: unigram, bigram and trigram models (:mod:`scaling.laws.count_models`)
fitted on the training split and scored on exactly the validation tokens a run's ``val_loss``
averages over, cached in the sweep directory.

A run evaluates ``train.eval_batches`` fixed batches of validation windows
(:meth:`scaling.data.Batches.val_batches`): windows of ``seq_len + 1`` tokens, each predicting
its last ``seq_len`` tokens from the ones before them in the window.  The count models score
the same target tokens, each from the ``n - 1`` tokens before it in the validation split (an
order-n model needs them; a window at the very start of the split takes an end-of-text token as
its context, the token that precedes every document in the token stream).  Their mean negative
log likelihood is in nats per token, as ``val_loss`` is; for a sweep fitting ``val_bpb`` the
trigram's is converted with the same target bytes.  The regime diagnostic compares every fitted
run with the trigram's loss (:class:`scaling.laws.result.Baseline`).  An arm whose runs train
another objective than next-token prediction (``train.objective`` mlm or prefix_denoise) gets no
baseline: its loss is over other tokens predicted from other context (masked tokens from both
sides, corrupted spans from a bidirectional prefix), which a left-context count model does not
score, so its regime check against the baseline reads "not evaluated".

``DIR/baseline.json`` keeps every baseline computed for the sweep, keyed by what it depends on
(the token splits' manifest, seq_len, batch_size, eval_batches and the smoothing), so a rerun of
the fit does not count again.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from scaling.config import Config
from scaling.data import Batches, TokenSplits, load_tokens
from scaling.errors import UsageError
from scaling.io import atomic_write_text
from scaling.laws import count_models
from scaling.laws.record import NotRun
from scaling.laws.result import Baseline
from scaling.sweep.plan import Plan

__all__ = ["BASELINE_FILE", "ORDERS", "val_targets_nll", "count_baseline", "sweep_baselines"]

BASELINE_FILE = "baseline.json"
ORDERS = {"unigram": 1, "bigram": 2, "trigram": 3}
SMOOTHING = {"smoothing": "absolute", "discount": 0.75, "k": 1.0}


def val_targets_nll(train, val, window_starts, seq_len: int, order: int, *, vocab_size: int, eot: int) -> float:
    """Mean NLL (nats per token) of the order-n count model of ``train`` on the targets of the
    validation windows starting at ``window_starts`` (tokens s+1 .. s+seq_len of ``val`` for each
    start s), each predicted from the ``order - 1`` validation tokens before it."""
    pad = order - 1
    ext = np.concatenate([np.full(pad, eot, dtype=np.int64), np.asarray(val, dtype=np.int64)])
    seg = seq_len + pad  # a segment: a window's targets and the context of its first one
    starts = np.asarray(window_starts, dtype=np.int64) + 1  # s + 1 - pad in val is s + 1 in ext
    held = ext[starts[:, None] + np.arange(seg)].ravel()
    p = count_models.token_probs(np.asarray(train), held, order, vocab_size=vocab_size, **SMOOTHING)
    t = np.arange(pad, held.size)  # p[i] scores held[t = i + pad]
    scored = (t % seg) >= pad  # positions whose context lies inside their own segment
    return float(-np.mean(np.log(p[scored])))


def count_baseline(splits: TokenSplits, seq_len: int, batch_size: int, eval_batches: int) -> dict:
    """{unigram, bigram, trigram (nats per token), tokens, bytes} on the validation targets of
    ``eval_batches`` batches of ``batch_size`` windows of ``seq_len`` (as a run evaluates)."""
    batches = Batches(splits, seq_len, batch_size, seed=0)
    starts = batches.val_window_ids(eval_batches) * seq_len
    eot = int(splits.manifest["eot"])
    out = {
        name: val_targets_nll(splits.train, splits.val, starts, seq_len, n, vocab_size=splits.n_vocab, eot=eot)
        for name, n in ORDERS.items()
    }
    out["tokens"] = int(starts.size * seq_len)
    out["bytes"] = int(batches.val_target_bytes(eval_batches))
    return out


def _key(splits: TokenSplits, cfg: Config) -> str:
    parts = {
        "manifest": splits.manifest,
        "seq_len": cfg.model.seq_len,
        "batch_size": cfg.train.batch_size,
        "eval_batches": cfg.train.eval_batches,
        **SMOOTHING,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cached(out: Path, cfg: Config) -> dict:
    """The baseline of the validation tokens of runs of ``cfg``, from DIR/baseline.json or counted."""
    splits = load_tokens(cfg.data)
    key = _key(splits, cfg)
    path = Path(out) / BASELINE_FILE
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), dict):
        return cache[key]
    value = count_baseline(splits, cfg.model.seq_len, cfg.train.batch_size, cfg.train.eval_batches)
    value.update(
        corpus=cfg.data.corpus,
        tokenizer=cfg.data.tokenizer,
        seq_len=cfg.model.seq_len,
        batch_size=cfg.train.batch_size,
        eval_batches=cfg.train.eval_batches,
    )
    cache[key] = value
    atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    return value


def _baseline(value: dict, loss_col: str) -> Baseline:
    regime = {
        "val_loss": value["trigram"],
        "val_bpb": value["trigram"] * value["tokens"] / (math.log(2) * value["bytes"]),
    }.get(loss_col)
    return Baseline(
        unigram=value["unigram"],
        bigram=value["bigram"],
        trigram=value["trigram"],
        tokens=int(value["tokens"]),
        regime_loss=regime,
    )


def sweep_baselines(plan: Plan, out: Path) -> dict[str | None, Baseline | NotRun]:
    """The baseline of each arm's runs (key None without arms), or why there is none: the runs of
    one arm evaluated on different validation tokens, or a corpus that cannot be read."""
    groups: dict[str | None, list] = {}
    for r in plan.runs:
        groups.setdefault(r.arm if plan.has_arms else None, []).append(r.cfg)
    result: dict[str | None, Baseline | NotRun] = {}
    for arm, cfgs in groups.items():
        keys = {(c.data, c.model.seq_len, c.train.batch_size, c.train.eval_batches) for c in cfgs}
        objectives = sorted({c.train.objective for c in cfgs} - {"causal"})
        if objectives:
            result[arm] = NotRun(
                f"not evaluated: the count-model baseline scores next-token prediction, and these runs "
                f"train {' and '.join(objectives)} (a loss over other tokens)"
            )
            continue
        if len(keys) > 1:
            result[arm] = NotRun(
                "the runs are evaluated on different validation tokens (data, seq_len, "
                "batch_size or eval_batches differ): no one baseline"
            )
            continue
        try:
            result[arm] = _baseline(_cached(out, cfgs[0]), plan.spec.fit_loss)
        except UsageError as e:
            result[arm] = NotRun(f"count-model baseline not computed: {e}")
    return result
