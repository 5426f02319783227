"""Corpus -> tokens on disk -> batches that are a pure function of (seed, step).

A corpus is a text file, a directory of .txt files, a glob, ``hf:<dataset name or
saved-dataset path>``, or a name under the shared data dir (``tinyshakespeare``,
``gutenberg``). Documents are files or dataset records. It is tokenized once into
``$SCALING_CACHE_DIR/tokens/<key>/{train,val}.bin`` (uint16 or uint32 memmaps, an
end-of-text token after every document) with a ``manifest.json``; the key hashes the
corpus content, the tokenizer and the split.

Validation holds out whole documents (a fixed, seed-independent choice of about
``val_fraction`` of them); a one-document corpus holds out the tail ``val_fraction`` of
its tokens, as nanoGPT does. Training sequences are the non-overlapping windows of
``seq_len + 1`` tokens (stride ``seq_len``) of the training split; each epoch visits them
in a permutation drawn from (seed, epoch), shifted by an offset in [0, seq_len) drawn from
(seed, epoch) so that every epoch cuts the text at new places (nanoGPT's random windows,
without repeats inside an epoch). The batch of step t is samples ``t*B .. t*B+B-1`` of
that endless stream: no loader state, exact resume. A curriculum sampler instead picks
window ids itself (unshifted windows, whose difficulty it has scored).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from scaling import tokenizer as tok
from scaling.config import DataConfig
from scaling.errors import UsageError, read_input_text
from scaling.paths import cache_dir, data_dir

NAMED_CORPORA = {"tinyshakespeare": "tinyshakespeare/input.txt", "gutenberg": "gutenberg"}


@dataclass(frozen=True)
class Document:
    name: str
    read: Callable[[], str]


def _file_doc(p: Path) -> Document:
    return Document(str(p), lambda: read_input_text(p, "corpus file", errors="replace"))


def _hf_documents(spec: str, field: str) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise UsageError("hf: corpora need the 'datasets' package (pip install datasets)") from None
    target = spec[3:]
    try:
        if Path(target).exists():
            ds = datasets.load_from_disk(target)
        else:
            ds = datasets.load_dataset(target)
    except Exception as e:
        raise UsageError(f"cannot load dataset {target!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if field not in ds.column_names:
        raise UsageError(f"dataset {target!r} has no text field {field!r} (columns: {ds.column_names})")
    texts = ds[field]
    return [Document(f"{target}#{i}", (lambda t=t: t)) for i, t in enumerate(texts)]


def corpus_documents(cfg: DataConfig) -> list[Document]:
    """The corpus's documents in a fixed order; a clear error if there are none."""
    spec = cfg.corpus
    if spec.startswith("hf:"):
        docs = _hf_documents(spec, cfg.hf_text_field)
    else:
        path = Path(spec).expanduser()
        if spec in NAMED_CORPORA and not path.exists():
            path = data_dir() / NAMED_CORPORA[spec]
        if path.is_file():
            docs = [_file_doc(path)]
        elif path.is_dir():
            docs = [_file_doc(p) for p in sorted(path.rglob("*.txt"))]
        elif any(c in spec for c in "*?["):
            docs = [_file_doc(Path(p)) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        else:
            raise UsageError(f"corpus not found: {spec}")
    if not docs:
        raise UsageError(f"corpus is empty: {spec} has no documents")
    return docs


def val_doc_indices(n_docs: int, val_fraction: float) -> set[int]:
    """Documents held out: a fixed (seed-independent) ~val_fraction of them, at least one
    each side when there are two or more documents."""
    if n_docs < 2:
        return set()
    n_val = min(n_docs - 1, max(1, round(val_fraction * n_docs)))
    order = np.random.default_rng(20240531).permutation(n_docs)
    return set(order[:n_val].tolist())


@dataclass(frozen=True)
class TokenSplits:
    """Memmapped token splits plus what is needed to report bits per byte."""

    train: np.ndarray
    val: np.ndarray
    manifest: dict
    encoding: object  # tiktoken.Encoding

    @property
    def n_vocab(self) -> int:
        return int(self.manifest["n_vocab"])


def _hash_documents(docs: list[Document]) -> tuple[str, list[str]]:
    h = hashlib.sha256()
    texts = []
    for d in docs:
        t = d.read()
        texts.append(t)
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20], texts


def _split_texts(texts: list[str], val_fraction: float) -> tuple[list[str], list[str], list[int]]:
    val_idx = val_doc_indices(len(texts), val_fraction)
    train = [t for i, t in enumerate(texts) if i not in val_idx]
    val = [t for i, t in enumerate(texts) if i in val_idx]
    return train, val, sorted(val_idx)


def _encode_docs(enc, texts: list[str], eot: int, dtype) -> np.ndarray:
    parts = []
    for ids in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1):
        parts.append(np.asarray(ids, dtype=dtype))
        parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def load_tokens(cfg: DataConfig) -> TokenSplits:
    """Tokenize the corpus once (cached by content, tokenizer and split) and memmap it."""
    tok.check_name(cfg.tokenizer)
    docs = corpus_documents(cfg)
    content_key, texts = _hash_documents(docs)
    if not any(texts):
        raise UsageError(f"corpus is empty: {cfg.corpus} holds no text")
    train_texts, val_texts, val_idx = _split_texts(texts, cfg.val_fraction)
    single = len(texts) == 1

    def bpe_training_texts():
        if single:
            return [texts[0][: int(len(texts[0]) * (1 - cfg.val_fraction))]]
        return train_texts

    enc = tok.get_tokenizer(cfg.tokenizer, bpe_training_texts, f"{content_key}-{cfg.val_fraction}")
    key = hashlib.sha256(json.dumps([content_key, cfg.tokenizer, cfg.val_fraction, enc.n_vocab]).encode()).hexdigest()[:20]
    out = cache_dir() / "tokens" / key
    if not (out / "manifest.json").is_file():
        _write_cache(out, enc, texts, train_texts, val_texts, val_idx, single, cfg, docs)
    manifest = json.loads((out / "manifest.json").read_text())
    dtype = np.dtype(manifest["dtype"])
    train = np.memmap(out / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(out / "val.bin", dtype=dtype, mode="r")
    return TokenSplits(train, val, manifest, enc)


def _write_cache(out: Path, enc, texts, train_texts, val_texts, val_idx, single, cfg, docs) -> None:
    eot = tok.eot_id(enc)
    dtype = np.uint16 if enc.n_vocab <= 2 ** 16 else np.uint32
    if single:
        all_ids = _encode_docs(enc, texts, eot, dtype)
        n_val = max(1, int(len(all_ids) * cfg.val_fraction))
        train_ids, val_ids = all_ids[:-n_val], all_ids[-n_val:]
    else:
        train_ids = _encode_docs(enc, train_texts, eot, dtype)
        val_ids = _encode_docs(enc, val_texts, eot, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    train_ids.tofile(tmp / "train.bin")
    val_ids.tofile(tmp / "val.bin")
    manifest = {
        "corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "n_vocab": enc.n_vocab, "eot": eot,
        "dtype": np.dtype(dtype).name, "n_train_tokens": int(len(train_ids)), "n_val_tokens": int(len(val_ids)),
        "n_documents": len(texts), "val_documents": [docs[i].name for i in val_idx],
        "split": "tail" if single else "documents", "val_fraction": cfg.val_fraction,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process wrote the same cache first
        shutil.rmtree(tmp, ignore_errors=True)


class Batches:
    """Training batches as a pure function of (seed, step); validation batches fixed."""

    def __init__(self, splits: TokenSplits, seq_len: int, batch_size: int, seed: int, sampler=None):
        self.splits, self.seq_len, self.batch_size, self.seed = splits, seq_len, batch_size, seed
        n = len(splits.train)
        # Room for a shift of up to seq_len - 1 tokens when the split allows it.
        self.max_offset = seq_len - 1 if n - 1 >= 2 * seq_len else 0
        self.n_windows = (n - 1 - self.max_offset) // seq_len
        if self.n_windows < 1:
            raise UsageError(f"the training split ({len(splits.train)} tokens) is shorter than one sequence "
                             f"of model.seq_len + 1 = {seq_len + 1} tokens")
        self.n_val_windows = (len(splits.val) - 1) // seq_len
        if self.n_val_windows < 1:
            raise UsageError(f"the validation split ({len(splits.val)} tokens) is shorter than one sequence "
                             f"of model.seq_len + 1 = {seq_len + 1} tokens")
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


def bits_per_byte(mean_loss_nats: float, n_target_tokens: int, n_bytes: int) -> float:
    return mean_loss_nats * n_target_tokens / (math.log(2) * max(n_bytes, 1))
