"""Fetch and clean a corpus into the data directory, checked against checksums.

    python -m experiments.prepare gutenberg [--out DIR] [--mirror URL_PATTERN] [--manifest FILE]
    python -m experiments.prepare tinyshakespeare [--out DIR] [--mirror URL]
    python -m experiments.prepare hf:NAME[:CONFIG][@SPLIT] [--config C] [--split S] [--text-column F]
        [--streaming | --no-streaming] [--format jsonl|parquet] [--shard-mb M] [--limit N] [--out DIR]

``gutenberg``: every book of the manifest (default: the corpus embedded in the package, the
one the default sweep trains on) into ``DIR/gutenberg/<number>.txt``, each cleaned of Project
Gutenberg's header and footer and checked against the manifest's sha256 of the cleaned text.
Without ``--mirror`` a book comes from the exact source its checksum was taken from (the
manifest's ``source``, else https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt); ``--mirror``
is a URL pattern with ``{id}`` for the book's number, e.g. a Project Gutenberg mirror's
``https://MIRROR/cache/epub/{id}/pg{id}.txt`` (a text revised since fails its checksum).
``tinyshakespeare``: karpathy's char-rnn ``input.txt`` (or ``--mirror URL``) into
``DIR/tinyshakespeare/input.txt``. ``hf:...``: a Hugging Face dataset's split as shards of
``{"text": ...}`` records in ``DIR/<name>[-<config>]-<split>/`` with a ``manifest.json`` of their
sha256 (``--text-column`` names the dataset's text field); train on it with
``--data.corpus DIR/<that folder>``.

``DIR`` defaults to ``$SCALING_DATA_DIR``, else ``$SCALING_CACHE_DIR/data`` (``~/.cache/scaling/
data``). Downloads go to ``.part`` files and resume (HTTP Range) after a dropped connection or
a new run; a corpus appears in ``DIR`` only whole and checked. A wrong checksum or a failed
download is one line on stderr and exit code 2, leaving nothing in place. Progress bars go to
stderr on a terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from scaling.data.hf import PREFIX as HF_PREFIX
from scaling.data.hf import parse_hf_spec
from scaling.data.packaged import load_manifest
from scaling.data.prepare import prepare_file, prepare_gutenberg, prepare_hf
from scaling.errors import ArgumentParser, UsageError, exit_on_usage_error, read_input_text
from scaling.paths import data_dir

NAMES = ("gutenberg", "tinyshakespeare")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", help="gutenberg, tinyshakespeare or hf:NAME[:CONFIG][@SPLIT]")
    p.add_argument(
        "--out", type=Path, default=None, help="data directory (default: SCALING_DATA_DIR, else the cache's)"
    )
    p.add_argument(
        "--mirror", default=None, help="URL pattern with {id} (gutenberg) or the file's URL (tinyshakespeare)"
    )
    p.add_argument("--manifest", type=Path, default=None, help="JSON manifest of the corpora (default: the package's)")
    p.add_argument("--config", default=None, help="hf: the dataset's configuration")
    p.add_argument("--split", default=None, help="hf: the split (default train, else the first)")
    p.add_argument("--text-column", default="text", help="hf: the field holding the text")
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True, help="hf: stream the records")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="hf: shard format")
    p.add_argument("--shard-mb", type=float, default=256.0, help="hf: text per shard, in MB")
    p.add_argument("--limit", type=int, default=None, help="hf: at most this many records")
    return p


def manifest_entry(name: str, path: Path | None) -> dict:
    manifest = load_manifest() if path is None else _read_manifest(path)
    if name not in manifest.get("corpora", {}):
        raise UsageError(f"manifest {path or '(package)'} has no corpus {name!r}")
    return manifest["corpora"][name]


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(read_input_text(path, "manifest"))
    except ValueError as e:
        raise UsageError(f"manifest {path} is not JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("corpora"), dict):
        raise UsageError(f"manifest {path} has no 'corpora' object")
    return manifest


def _bar(**kw) -> tqdm:
    return tqdm(disable=None, file=sys.stderr, dynamic_ncols=True, **kw)


def run(args: argparse.Namespace) -> tuple[Path, str]:
    out = (args.out or data_dir()).expanduser()
    if args.name.startswith(HF_PREFIX):
        spec = parse_hf_spec(args.name)
        spec = dataclasses.replace(spec, config=args.config or spec.config, split=args.split or spec.split)
        if args.shard_mb <= 0 or (args.limit is not None and args.limit < 1):
            raise UsageError("--shard-mb and --limit must be positive")
        with _bar(unit=" records", desc=str(spec)) as bar:
            dest = prepare_hf(
                out,
                spec,
                args.text_column,
                streaming=args.streaming,
                fmt=args.format,
                shard_bytes=int(args.shard_mb * 2**20),
                limit=args.limit,
                on_record=bar.update,
            )
        n = json.loads((dest / "manifest.json").read_text())["records"]
        return dest, f"{n} records"
    if args.name not in NAMES:
        raise UsageError(f"unknown corpus {args.name!r} (expected {', '.join(NAMES)} or hf:NAME[:CONFIG][@SPLIT])")
    entry = manifest_entry(args.name, args.manifest)
    docs = entry["documents"]
    if args.name == "gutenberg":
        with _bar(total=len(docs), unit=" books", desc="gutenberg") as bar:
            dest = prepare_gutenberg(out, entry, args.mirror, on_book=lambda _: bar.update(1))
    else:
        doc = docs[0]
        with _bar(total=doc["bytes"], unit="B", unit_scale=True, desc=args.name) as bar:
            dest = prepare_file(out, doc, args.mirror or doc["source"], on_bytes=bar.update)
    return dest, f"{len(docs)} documents, {sum(d['bytes'] for d in docs)} bytes, checksums verified"


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    dest, what = run(args)
    print(f"{args.name}: {what} in {dest}")


if __name__ == "__main__":
    main()
