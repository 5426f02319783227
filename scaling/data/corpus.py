"""Corpora: where text comes from and which documents are held out for validation.

A corpus (``data.corpus``) is one of

- a file: ``.jsonl`` (one JSON object per line) or ``.parquet``, one document per record, its
  text in the field ``data.hf_text_field`` (default ``text``); any other file is one document
  of text;
- a directory: its ``.txt``, ``.jsonl`` and ``.parquet`` files, recursively, in sorted order;
- a glob of such files;
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset's records, streamed
  (:mod:`scaling.data.hf`);
- a name, ``tinyshakespeare`` or ``gutenberg``: under ``SCALING_DATA_DIR`` when it is set
  (``tinyshakespeare/input.txt``, ``gutenberg/``), else the copy embedded in the package
  (:mod:`scaling.data.packaged`; the same documents). ``python -m experiments.prepare``
  fetches them and more into a data directory.

Validation holds out whole documents (a fixed, seed-independent choice of about
``val_fraction`` of them).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import DataConfig
from scaling.data.hf import HF_EXTRA, iter_texts, parse_hf_spec
from scaling.data.hf import PREFIX as HF_PREFIX
from scaling.data.packaged import NAMED_CORPORA, packaged_path
from scaling.errors import UsageError, read_input_text
from scaling.paths import data_dir_override

RECORD_SUFFIXES = (".jsonl", ".parquet")
DIR_SUFFIXES = (".txt", *RECORD_SUFFIXES)

__all__ = ["NAMED_CORPORA", "Document", "corpus_documents", "named_corpus_path", "val_doc_indices"]


@dataclass(frozen=True)
class Document:
    name: str
    read: Callable[[], str]


def _text_doc(p: Path) -> Document:
    return Document(str(p), lambda: read_input_text(p, "corpus file", errors="replace"))


def _jsonl_texts(p: Path, field: str) -> list[str]:
    texts = []
    for n, line in enumerate(read_input_text(p, "corpus file", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UsageError(f"{p}:{n}: not a JSON object") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise UsageError(f"{p}:{n}: no text field {field!r} (set data.hf_text_field)")
        texts.append(text)
    return texts


def _parquet_texts(p: Path, field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"Parquet corpora need the 'pyarrow' package ({HF_EXTRA})") from None
    try:
        schema = pq.read_schema(p)
        if field not in schema.names:
            raise UsageError(f"{p}: no text column {field!r} (columns: {schema.names}; set data.hf_text_field)")
        texts = pq.read_table(p, columns=[field]).column(field).to_pylist()
    except UsageError:
        raise
    except Exception as e:  # pyarrow's errors: not Parquet, unreadable
        raise UsageError(f"cannot read Parquet corpus file {p}: {str(e).splitlines()[0] if str(e) else e}") from None
    if not all(isinstance(t, str) for t in texts):
        raise UsageError(f"{p}: column {field!r} holds values that are not text")
    return texts


def _file_docs(p: Path, field: str) -> list[Document]:
    """A file's documents: one per record of a .jsonl or .parquet file, else the file."""
    suffix = p.suffix
    if suffix not in RECORD_SUFFIXES:
        return [_text_doc(p)]
    texts = _jsonl_texts(p, field) if suffix == ".jsonl" else _parquet_texts(p, field)
    return [Document(f"{p}#{i}", (lambda t=t: t)) for i, t in enumerate(texts)]


def _hf_documents(spec: str, field: str) -> list[Document]:
    hf = parse_hf_spec(spec)
    return [Document(f"{hf}#{i}", (lambda t=t: t)) for i, t in enumerate(iter_texts(hf, field))]


def named_corpus_path(name: str) -> Path:
    """Where named corpus ``name`` is read: under ``SCALING_DATA_DIR`` when it is set, else the
    embedded copy (extracted into the cache on first use)."""
    root = data_dir_override()
    if root is None:
        return packaged_path(name)
    path = root / NAMED_CORPORA[name]
    if not path.exists():
        raise UsageError(
            f"corpus not found: {name} (no {path} under SCALING_DATA_DIR; unset it to use the embedded "
            f"copy, or run python -m experiments.prepare {name} --out {root})"
        )
    return path


def corpus_documents(cfg: DataConfig) -> list[Document]:
    """The corpus's documents in a fixed order; a clear error if there are none."""
    spec, field = cfg.corpus, cfg.hf_text_field
    if spec.startswith(HF_PREFIX):
        docs = _hf_documents(spec, field)
    else:
        path = Path(spec).expanduser()
        if spec in NAMED_CORPORA and not path.exists():
            path = named_corpus_path(spec)
        if path.is_file():
            docs = _file_docs(path, field)
        elif path.is_dir():
            # a broken link is kept, so that reading it names it rather than dropping a document
            files = sorted(p for p in path.rglob("*") if p.suffix in DIR_SUFFIXES and (p.is_file() or p.is_symlink()))
            docs = [d for p in files for d in _file_docs(p, field)]
        elif any(c in spec for c in "*?["):
            files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
            docs = [d for p in files for d in _file_docs(p, field)]
        else:
            hint = f" (named corpora: {', '.join(NAMED_CORPORA)}; or a file, directory, glob or hf:NAME)"
            raise UsageError(f"corpus not found: {spec}{hint}")
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
