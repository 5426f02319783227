"""Corpora: where text comes from and which documents are held out for validation.

A corpus is a text file, a directory of .txt files, a glob, ``hf:<dataset name or
saved-dataset path>``, or a name under the shared data dir (``tinyshakespeare``,
``gutenberg``). Documents are files or dataset records. Validation holds out whole documents
(a fixed, seed-independent choice of about ``val_fraction`` of them).
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import DataConfig
from scaling.errors import UsageError, read_input_text
from scaling.paths import data_dir

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
        raise UsageError(
            f"cannot load dataset {target!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
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
