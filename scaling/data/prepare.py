"""Fetch and clean corpora into a data directory, checked against checksums.

- :func:`prepare_gutenberg`: the books of a manifest (by default the embedded corpus's, see
  :mod:`scaling.data.packaged`) from Project Gutenberg texts, each cleaned of Project
  Gutenberg's header and footer (:func:`clean_gutenberg`) and checked against the manifest's
  sha256 of the cleaned text, into ``OUT/gutenberg/``;
- :func:`prepare_file`: one file checked against its sha256 (``OUT/tinyshakespeare/input.txt``);
- :func:`prepare_hf`: a Hugging Face dataset's split as JSONL or Parquet shards of
  ``{"text": ...}`` records, with a ``manifest.json`` of the shards' sha256.

Downloads resume (:mod:`scaling.download`). A corpus directory appears in ``OUT`` only whole:
it is assembled under ``OUT/.partial/`` (which keeps the books already checked, so an
interrupted run resumes) and renamed into place at the end. A corpus already in place is
checked and left alone; one that differs from the manifest is an error, never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from scaling.data.hf import HF_EXTRA, HFSpec, iter_texts
from scaling.download import DownloadError, download, sha256_file
from scaling.errors import UsageError
from scaling.io import atomic_write_bytes, atomic_write_text, fsync_dir

PG_MIRROR = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"
PARTIAL = ".partial"
_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*$", re.M | re.I)
_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.M | re.I)
_CREDITS = re.compile(r"\A(Produced|Prepared|Transcribed) by[^\n]*(\n[^\n]+)*\n*", re.I)


def clean_gutenberg(raw: bytes) -> str:
    """A Project Gutenberg text without its header and footer: UTF-8 (else Windows-1252) decoded,
    ``\\n`` line endings, the lines between the ``*** START OF`` line and the ``*** END OF`` /
    ``End of the Project Gutenberg`` line, less a leading "Produced by" credit paragraph,
    trailing spaces and blank lines at either end; one final newline."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = _START.search(text)
    body = text[start.end() :] if start else text
    end = _END.search(body)
    if end:
        body = body[: end.start()]
    body = _CREDITS.sub("", body.strip("\n")).strip("\n")
    return "\n".join(line.rstrip() for line in body.split("\n")).rstrip() + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _matches(path: Path, doc: dict) -> bool:
    return path.is_file() and path.stat().st_size == doc["bytes"] and sha256_file(path) == doc["sha256"]


def _check_existing(dest: Path, docs: dict[Path, dict]) -> bool:
    """True when ``dest`` holds every document, checked; False when it does not exist."""
    if not dest.exists():
        return False
    for path, doc in docs.items():
        if not _matches(path, doc):
            raise UsageError(f"{dest} exists and {path.name} differs from the manifest; move it away to prepare again")
    return True


def book_url(doc: dict, mirror: str | None) -> str:
    """Where book ``doc`` is fetched: ``mirror`` with ``{id}`` filled in; without a mirror, the
    manifest's pinned ``source`` (the exact text its checksum was taken from), else Project
    Gutenberg's own site."""
    if mirror is not None:
        return mirror.format(id=doc["id"])
    return doc.get("source") or PG_MIRROR.format(id=doc["id"])


def prepare_gutenberg(
    out: Path, entry: dict, mirror: str | None = None, on_book: Callable[[dict], None] | None = None
) -> Path:
    """The books of manifest ``entry`` (``path``, ``documents``) cleaned into ``out/<path>``."""
    if mirror is not None and "{id}" not in mirror:
        raise UsageError(f"--mirror {mirror!r} has no {{id}} for the book's number")
    rel = Path(entry["path"])
    dest, stage = out / rel, out / PARTIAL / rel
    docs = entry["documents"]
    names = {d["path"]: Path(d["path"]).relative_to(rel) for d in docs}
    if _check_existing(dest, {dest / names[d["path"]]: d for d in docs}):
        return dest
    stage.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        final = stage / names[doc["path"]]
        if not _matches(final, doc):
            _fetch_book(doc, final, book_url(doc, mirror))
        if on_book is not None:
            on_book(doc)
    atomic_write_text(stage / "manifest.json", json.dumps(entry, indent=1, ensure_ascii=False) + "\n")
    _move_into_place(stage, dest)
    return dest


def _fetch_book(doc: dict, final: Path, url: str) -> None:
    raw = final.with_name(final.name + ".raw")
    if not raw.is_file():  # a complete raw text of an earlier, interrupted run is reused
        download(url, raw)
    text = clean_gutenberg(raw.read_bytes()).encode("utf-8")
    raw.unlink()
    got = sha256_bytes(text)
    if got != doc["sha256"]:
        raise DownloadError(
            f"checksum mismatch for book {doc['id']} ({url}): the cleaned text's sha256 is {got}, "
            f"expected {doc['sha256']}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(final, text)


def prepare_file(out: Path, doc: dict, url: str, on_bytes: Callable[[int], None] | None = None) -> Path:
    """One document (``path``, ``bytes``, ``sha256``) downloaded into ``out/<path>``."""
    dest = out / doc["path"]
    if _check_existing(dest, {dest: doc}):
        return dest
    stage = out / PARTIAL / doc["path"]
    try:
        download(url, stage, sha256=doc["sha256"], on_bytes=on_bytes)
    except DownloadError:
        _drop_empty_folders(stage)
        raise
    _move_into_place(stage, dest)
    return dest


def _move_into_place(stage: Path, dest: Path) -> None:
    """Rename the assembled ``stage`` to ``dest``; the staging folders left empty go."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(stage, dest)
    fsync_dir(dest.parent)
    _drop_empty_folders(stage)


def _drop_empty_folders(stage: Path) -> None:
    """Remove the staging folders above ``stage`` that are empty, up to ``.partial``."""
    for folder in stage.parents:
        try:
            folder.rmdir()
        except OSError:
            break
        if folder.name == PARTIAL:
            break


def hf_dir_name(spec: HFSpec) -> str:
    """A directory name for a dataset spec: ``owner__name[-config]-split``."""
    name = Path(spec.name).name if Path(spec.name).exists() else spec.name.replace("/", "__")
    return name + (f"-{spec.config}" if spec.config else "") + f"-{spec.split or 'train'}"


def prepare_hf(
    out: Path,
    spec: HFSpec,
    text_column: str,
    *,
    streaming: bool = True,
    fmt: str = "jsonl",
    shard_bytes: int = 256 << 20,
    limit: int | None = None,
    on_record: Callable[[int], None] | None = None,
) -> Path:
    """A dataset's split as shards ``<split>-NNNNN.<fmt>`` of ``{"text": ...}`` records in
    ``out/<hf_dir_name>``, each up to ``shard_bytes`` of text; ``limit`` caps the records."""
    if fmt not in ("jsonl", "parquet"):
        raise UsageError(f"unknown shard format {fmt!r} (jsonl or parquet)")
    write = _jsonl_shard if fmt == "jsonl" else _parquet_writer()
    dest = out / hf_dir_name(spec)
    if dest.exists():
        raise UsageError(f"{dest} exists already; move it away to prepare {spec} again")
    stage = out / PARTIAL / dest.name
    shutil.rmtree(stage, ignore_errors=True)  # a dataset's records are re-read from the start
    stage.mkdir(parents=True)
    shards, batch, size, n = [], [], 0, 0
    split = spec.split or "train"

    def flush():
        path = stage / f"{split}-{len(shards):05d}.{fmt}"
        data = write(batch)
        atomic_write_bytes(path, data)
        shards.append({"path": path.name, "records": len(batch), "bytes": len(data), "sha256": sha256_bytes(data)})

    for text in iter_texts(spec, text_column, streaming):
        if limit is not None and n >= limit:
            break
        batch.append(text)
        size += len(text)
        n += 1
        if on_record is not None:
            on_record(1)
        if size >= shard_bytes:
            flush()
            batch, size = [], 0
    if batch or not shards:
        flush()
    manifest = {"dataset": str(spec), "text_column": text_column, "records": n, "shards": shards}
    atomic_write_text(stage / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    _move_into_place(stage, dest)
    return dest


def _jsonl_shard(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")


def _parquet_writer() -> Callable[[list[str]], bytes]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"Parquet shards need the 'pyarrow' package ({HF_EXTRA})") from None

    def write(texts: list[str]) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), buf)
        return buf.getvalue()

    return write


__all__ = ["clean_gutenberg", "prepare_file", "prepare_gutenberg", "prepare_hf"]
