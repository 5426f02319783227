"""Build the embedded corpora (:mod:`scaling.data.packaged`) from a data directory.

    python -m scaling.data.embed SRC_DATA_DIR [--out scaling/data/corpora] [--preset 9]

For each named corpus, the documents under ``SRC_DATA_DIR`` (``tinyshakespeare/input.txt``;
``gutenberg/**/*.txt`` in sorted order, as :func:`scaling.data.corpus.corpus_documents` lists
them) go into ``<name>.tar.xz`` (a reproducible tar: sorted members, zero times and owners;
xz at ``--preset``, extreme) and ``manifest.json`` gets their metadata. Titles, authors and
sources come from ``gutenberg/MANIFEST.tsv`` where it lists the book (``pg_number``, ``title``,
``author``, ``source_repo``, ``commit``, ``source_path``), else the title is the text's first
non-blank line. The archives and the manifest are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path

from scaling.data.packaged import FORMAT, MANIFEST, NAMED_CORPORA
from scaling.errors import ArgumentParser, UsageError, exit_on_usage_error, read_input_bytes
from scaling.io import atomic_write_bytes, atomic_write_text

DEFAULT_OUT = Path(__file__).resolve().parent / "corpora"
CHAR_RNN_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Metadata of documents that no MANIFEST.tsv describes.
KNOWN = {
    "tinyshakespeare/input.txt": {
        "id": None,
        "title": "tiny-shakespeare",
        "author": "William Shakespeare",
        "source": CHAR_RNN_URL,
    }
}


def corpus_files(src: Path, name: str) -> list[Path]:
    """The documents of named corpus ``name`` under data directory ``src``, in corpus order."""
    path = src / NAMED_CORPORA[name]
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.txt")) if path.is_dir() else []
    if not files:
        raise UsageError(f"no documents for corpus {name} under {path}")
    return files


def tsv_metadata(src: Path) -> dict[str, dict]:
    """Per data-dir path, the metadata that ``gutenberg/MANIFEST.tsv`` gives (empty if none)."""
    tsv = src / NAMED_CORPORA["gutenberg"] / "MANIFEST.tsv"
    if not tsv.is_file():
        return {}
    out = {}
    for row in csv.DictReader(io.StringIO(tsv.read_text(encoding="utf-8")), delimiter="\t"):
        pg = row["pg_number"]
        source = None
        if row.get("source_repo") and row.get("commit") and row.get("source_path"):
            source = f"https://raw.githubusercontent.com/{row['source_repo']}/{row['commit']}/{row['source_path']}"
        meta = {"id": int(pg), "title": row["title"], "author": row.get("author") or None, "source": source}
        out[f"{NAMED_CORPORA['gutenberg']}/{pg}.txt"] = meta
    return out


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def document_entry(rel: str, data: bytes, meta: dict | None) -> dict:
    stem = Path(rel).stem
    meta = meta or {
        "id": int(stem) if stem.isdigit() else None,
        "title": first_line(data.decode("utf-8", errors="replace")),
        "author": None,
        "source": None,
    }
    return {"path": rel, **meta, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def tar_xz(members: list[tuple[str, bytes]], preset: int) -> bytes:
    """A reproducible xz-compressed tar of ``(name, bytes)`` members, in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, preset=preset | lzma.PRESET_EXTREME)


def build(src: Path, out: Path, preset: int = 9, names: tuple[str, ...] = tuple(NAMED_CORPORA)) -> dict:
    """Write ``<name>.tar.xz`` per corpus in ``names`` into ``out`` and update ``manifest.json``
    there (other corpora's entries are kept); returns the manifest."""
    meta = {**KNOWN, **tsv_metadata(src)}
    old = out / MANIFEST
    corpora = json.loads(old.read_text(encoding="utf-8"))["corpora"] if old.is_file() else {}
    for name in names:
        members, docs = [], []
        for p in corpus_files(src, name):
            rel = p.relative_to(src).as_posix()
            data = read_input_bytes(p, "corpus file")
            members.append((rel, data))
            docs.append(document_entry(rel, data, meta.get(rel)))
        archive = f"{name}.tar.xz"
        blob = tar_xz(members, preset)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / archive, blob)
        corpora[name] = {
            "archive": archive,
            "archive_sha256": hashlib.sha256(blob).hexdigest(),
            "path": NAMED_CORPORA[name],
            "documents": docs,
        }
    manifest = {"format": FORMAT, "corpora": dict(sorted(corpora.items()))}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m scaling.data.embed", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="data directory holding tinyshakespeare/ and gutenberg/")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the archives and manifest.json go")
    p.add_argument("--preset", type=int, default=9, choices=range(10), help="xz preset (extreme)")
    p.add_argument("--corpus", action="append", choices=sorted(NAMED_CORPORA), help="only these corpora")
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    manifest = build(args.src, args.out, args.preset, tuple(args.corpus or NAMED_CORPORA))
    for name in args.corpus or NAMED_CORPORA:
        entry = manifest["corpora"][name]
        size = (args.out / entry["archive"]).stat().st_size
        n_bytes = sum(d["bytes"] for d in entry["documents"])
        print(f"{name}: {len(entry['documents'])} documents, {n_bytes} bytes -> {entry['archive']} ({size} bytes)")


if __name__ == "__main__":
    main()
