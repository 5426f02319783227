"""Tokens on disk: a corpus tokenized once into memmapped train and validation splits.

The corpus (:mod:`scaling.data.corpus`) is tokenized once into
``$SCALING_CACHE_DIR/tokens/<key>/{train,val}.bin`` (uint16 or uint32 memmaps, an end-of-text
token after every document) with a ``manifest.json``; the key hashes the corpus content, the
tokenizer and the split. Validation holds whole documents; a one-document corpus holds out the
tail ``val_fraction`` of its tokens, as nanoGPT does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling import tokenizer as tok
from scaling.config import DataConfig
from scaling.data.corpus import Document, corpus_documents, val_doc_indices
from scaling.errors import UsageError
from scaling.paths import cache_dir


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
    key_parts = [content_key, cfg.tokenizer, cfg.val_fraction, enc.n_vocab]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:20]
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
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
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
        "corpus": cfg.corpus,
        "tokenizer": cfg.tokenizer,
        "n_vocab": enc.n_vocab,
        "eot": eot,
        "dtype": np.dtype(dtype).name,
        "n_train_tokens": int(len(train_ids)),
        "n_val_tokens": int(len(val_ids)),
        "n_documents": len(texts),
        "val_documents": [docs[i].name for i in val_idx],
        "split": "tail" if single else "documents",
        "val_fraction": cfg.val_fraction,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process wrote the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
