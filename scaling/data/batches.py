"""Batches that are a pure function of (seed, step).

Training sequences are the non-overlapping windows of ``seq_len + 1`` tokens (stride
``seq_len``) of the training split; each epoch visits them in a permutation drawn from (seed,
epoch), shifted by an offset in [0, seq_len) drawn from (seed, epoch) so that every epoch cuts
the text at new places (nanoGPT's random windows, without repeats inside an epoch). The batch of
step t is samples ``t*B .. t*B+B-1`` of that endless stream: no loader state, exact resume. A
curriculum sampler (:mod:`scaling.data.curriculum`) instead picks window ids itself (unshifted
windows, whose difficulty it has scored). Validation batches are fixed windows of the
validation split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from scaling import tokenizer as tok
from scaling.data.tokens import TokenSplits
from scaling.errors import UsageError


class Batches:
    """Training batches as a pure function of (seed, step); validation batches fixed."""

    def __init__(self, splits: TokenSplits, seq_len: int, batch_size: int, seed: int, sampler=None):
        self.splits, self.seq_len, self.batch_size, self.seed = splits, seq_len, batch_size, seed
        n = len(splits.train)
        # Room for a shift of up to seq_len - 1 tokens when the split allows it.
        self.max_offset = seq_len - 1 if n - 1 >= 2 * seq_len else 0
        self.n_windows = (n - 1 - self.max_offset) // seq_len
        if self.n_windows < 1:
            raise UsageError(
                f"the training split ({len(splits.train)} tokens) is shorter than one sequence "
                f"of model.seq_len + 1 = {seq_len + 1} tokens"
            )
        self.n_val_windows = (len(splits.val) - 1) // seq_len
        if self.n_val_windows < 1:
            raise UsageError(
                f"the validation split ({len(splits.val)} tokens) is shorter than one sequence "
                f"of model.seq_len + 1 = {seq_len + 1} tokens"
            )
        self.sampler = sampler  # optional: (step, sample_ids) -> window ids (curriculum)
        lengths = np.asarray(tok.token_byte_lengths(splits.encoding), dtype=np.int64)
        self._byte_len = lengths

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    @functools.lru_cache(maxsize=4)
    def _offset(self, epoch: int) -> int:
        return int(np.random.default_rng([self.seed, epoch, 1]).integers(0, self.max_offset + 1))

    def window_starts(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Token offsets in the training split of rows [lo, hi) of step ``step``'s batch."""
        hi = self.batch_size if hi is None else hi
        sample = step * self.batch_size + np.arange(lo, hi, dtype=np.int64)
        if self.sampler is not None:
            return self.sampler(step, sample) * self.seq_len
        epoch, pos = np.divmod(sample, self.n_windows)
        if epoch[0] == epoch[-1]:  # the usual case: the rows lie in one epoch
            e = int(epoch[0])
            return self._perm(e)[pos] * self.seq_len + self._offset(e)
        out = np.empty_like(sample)
        for e in np.unique(epoch):
            m = epoch == e
            out[m] = self._perm(int(e))[pos[m]] * self.seq_len + self._offset(int(e))
        return out

    def _windows(self, data: np.ndarray, starts: np.ndarray) -> np.ndarray:
        idx = starts[:, None] + np.arange(self.seq_len + 1)
        return np.asarray(data[idx], dtype=np.int32)

    def train_batch(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of step ``step``'s batch: int32 (rows, seq_len + 1) windows."""
        return self._windows(self.splits.train, self.window_starts(step, lo, hi))

    def val_window_ids(self, n_batches: int) -> np.ndarray:
        n = n_batches * self.batch_size
        return np.linspace(0, self.n_val_windows - 1, n).round().astype(np.int64)

    def val_batches(self, n_batches: int, lo: int = 0, hi: int | None = None) -> Iterator[np.ndarray]:
        hi = self.batch_size if hi is None else hi
        ids = self.val_window_ids(n_batches).reshape(n_batches, self.batch_size)
        for row in ids:
            yield self._windows(self.splits.val, row[lo:hi] * self.seq_len)

    def val_target_bytes(self, n_batches: int) -> int:
        """UTF-8 bytes the validation targets stand for (for bits per byte)."""
        w = self._windows(self.splits.val, self.val_window_ids(n_batches) * self.seq_len)
        return int(self._byte_len[w[:, 1:]].sum())

    def epochs(self, tokens: int) -> float:
        return tokens / (self.n_windows * self.seq_len)
