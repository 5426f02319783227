"""The named corpora embedded in the package, extracted once into the cache and checked.

``scaling/data/corpora/`` holds one xz-compressed tar per named corpus (``gutenberg.tar.xz``,
``tinyshakespeare.tar.xz``) and ``manifest.json``, which lists each corpus's documents in the
data-directory layout (``gutenberg/120.txt``, ``tinyshakespeare/input.txt``) with their Project
Gutenberg number (``id``, null for others), ``title``, ``author``, ``source`` (the URL the text
was cleaned from), ``bytes`` and ``sha256`` of the cleaned text. :mod:`scaling.data.embed`
rebuilds both from a data directory.

:func:`packaged_path` extracts a corpus into ``$SCALING_CACHE_DIR/corpora/<name>-<key>/`` (the
key hashes the corpus's manifest entry, so a new release extracts beside an old one): every
document is read from the archive, checked against its length and sha256, written into a
temporary directory, and that directory is renamed into place only when all are there (under a
file lock, so concurrent processes extract once). A directory in place is therefore whole; its
files' sizes are checked on each use and a copy that changed is extracted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tarfile
from importlib import resources
from pathlib import Path

from scaling.errors import UsageError
from scaling.io import file_lock, fsync_dir
from scaling.paths import cache_dir

# A named corpus -> its path under a data directory (a file, or a directory of documents).
NAMED_CORPORA = {"tinyshakespeare": "tinyshakespeare/input.txt", "gutenberg": "gutenberg"}
MANIFEST = "manifest.json"
FORMAT = 1


def corpora_dir():
    """The package's ``corpora`` folder (a ``Traversable``: a real directory once installed)."""
    return resources.files("scaling.data") / "corpora"


def load_manifest() -> dict:
    """The embedded corpora's manifest: ``{"format": 1, "corpora": {name: entry}}``."""
    try:
        manifest = json.loads((corpora_dir() / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"the package's corpus manifest is missing or broken ({e}); reinstall scaling") from None
    if manifest.get("format") != FORMAT:
        raise UsageError(f"corpus manifest format {manifest.get('format')!r} is not {FORMAT}; reinstall scaling")
    return manifest


def corpus_entry(name: str) -> dict:
    """The manifest entry of embedded corpus ``name`` (``archive``, ``path``, ``documents``)."""
    corpora = load_manifest()["corpora"]
    if name not in corpora:
        raise UsageError(f"no embedded corpus named {name!r} (embedded: {', '.join(sorted(corpora))})")
    return corpora[name]


def entry_key(entry: dict) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def packaged_path(name: str) -> Path:
    """The embedded corpus ``name`` as a file or directory on disk (extracted on first use)."""
    entry = corpus_entry(name)
    root = cache_dir() / "corpora" / f"{name}-{entry_key(entry)}"
    if not _intact(root, entry):
        with file_lock(root.parent / f".{root.name}.lock"):  # one extraction at a time
            if not _intact(root, entry):
                _extract(entry, root)
    return root / entry["path"]


def _intact(root: Path, entry: dict) -> bool:
    try:
        return all((root / d["path"]).stat().st_size == d["bytes"] for d in entry["documents"])
    except OSError:
        return False


def _extract(entry: dict, root: Path) -> None:
    """Extract under the lock: a leftover of a killed extraction of ``root`` goes first."""
    for leftover in root.parent.glob(f".tmp-{root.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root.parent / f".tmp-{root.name}-{secrets.token_hex(4)}"
    try:
        _extract_into(entry, tmp)
        if root.exists():  # a copy that changed since it was extracted: set it aside first
            stale = root.parent / f".stale-{root.name}-{secrets.token_hex(4)}"
            os.replace(root, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, root)
        fsync_dir(root.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_into(entry: dict, tmp: Path) -> None:
    """Every document of ``entry`` from its archive into ``tmp``, checked, in one pass."""
    wanted = {d["path"]: d for d in entry["documents"]}
    archive = corpora_dir() / entry["archive"]
    try:
        with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:xz") as tf:
            for member in tf:
                doc = wanted.pop(member.name, None)
                if doc is None:
                    continue
                f = tf.extractfile(member) if member.isfile() else None
                data = f.read() if f is not None else b""
                if len(data) != doc["bytes"] or hashlib.sha256(data).hexdigest() != doc["sha256"]:
                    raise UsageError(f"embedded corpus file {member.name} fails its checksum; reinstall scaling")
                out = tmp / member.name
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "wb") as w:
                    w.write(data)
                    w.flush()
                    os.fsync(w.fileno())
    except (OSError, tarfile.TarError, EOFError) as e:
        raise UsageError(
            f"cannot read the embedded corpus archive {entry['archive']}: {e}; reinstall scaling"
        ) from None
    if wanted:
        raise UsageError(f"embedded corpus archive {entry['archive']} lacks {sorted(wanted)[0]}; reinstall scaling")
