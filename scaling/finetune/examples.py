"""Fine-tuning data: JSONL records read and checked, split, tokenised, packed into rows.

Instruct rows are windows of ``seq_len + 1`` tokens: the inputs are ``row[:-1]``, the targets
``row[1:]``, and the loss mask marks the targets that are response tokens (the response and
the end-of-text token after it), so a prompt's tokens are read but never predicted. With
packing, examples follow each other in a row (the end-of-text token separates them) while
the next one fits whole; an example is never split across rows; the rest of a row is
padding (token 0, mask 0). Attention is causal over the whole row: a packed example can see
the examples before it in its row, as in pretraining on concatenated documents.

Classify examples are token sequences cut to ``seq_len`` (their first tokens), padded, with
their lengths (the last token's index is ``length - 1``) and their label's index in the
sorted labels of the training split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.errors import UsageError, read_input_bytes
from scaling.io import parse_jsonl

FIELDS = {"instruct": ("prompt", "response"), "classify": ("text", "label")}
SPLIT_SEED = 20240612


@dataclass(frozen=True)
class Dataset:
    """The records of a data file by split, and the file's SHA-256 (part of a run's identity)."""

    train: list[dict]
    test: list[dict]
    sha256: str


def read_records(path: str | Path, kind: str, val_fraction: float) -> Dataset:
    """Records of a JSONL file checked for ``kind``'s fields (strings, a non-empty training
    and test split); records without ``split`` are held out by a fixed choice of ``val_fraction``."""
    raw = read_input_bytes(path, "data file")
    try:
        records = parse_jsonl(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise UsageError(f"data file {path} is not UTF-8 text") from None
    a, b = FIELDS[kind]
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get(a), str) or not isinstance(r.get(b), str):
            raise UsageError(f"data file {path}: record {i + 1} needs string fields {a!r} and {b!r} for task {kind}")
        if r.get("split", "train") not in ("train", "test"):
            raise UsageError(f"data file {path}: record {i + 1} has split {r['split']!r}, not train or test")
    unsplit = [i for i, r in enumerate(records) if "split" not in r]
    held = set()
    if unsplit:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(unsplit))
        held = {unsplit[j] for j in order[: max(1, round(val_fraction * len(unsplit)))].tolist()}
    train, test = [], []
    for i, r in enumerate(records):
        (test if r.get("split") == "test" or i in held else train).append(r)
    if not train or not test:
        raise UsageError(f"data file {path} needs records in both splits (train: {len(train)}, test: {len(test)})")
    return Dataset(train, test, hashlib.sha256(raw).hexdigest())


def eval_subset(records: list[dict], n: int) -> list[dict]:
    """At most ``n`` held-out records: all of them, or a fixed (seed-independent) choice kept in file order."""
    if len(records) <= n:
        return records
    keep = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(records))[:n])
    return [records[i] for i in keep.tolist()]


# ----------------------------------------------------------------------------- instruct


@dataclass(frozen=True)
class Pair:
    """An instruct example: the prompt's tokens (template applied) and the response's (end-of-text last)."""

    prompt: list[int]
    response: list[int]


def encode_pairs(
    records: Sequence[dict], encode: Callable[[str], list[int]], template: str, eot: int, seq_len: int
) -> list[Pair]:
    """Pairs that fit one row of ``seq_len + 1`` tokens: a long prompt keeps its last tokens;
    a response that leaves no room for one prompt token is refused."""
    out = []
    for r in records:
        prompt = encode(template.replace("{prompt}", r["prompt"]))
        response = encode(r["response"]) + [eot]
        room = seq_len + 1 - len(response)
        if room < 1:
            raise UsageError(
                f"a response of {len(response)} tokens does not fit rows of {seq_len} tokens; raise train.seq_len"
            )
        out.append(Pair(prompt[-room:], response))
    return out


def pack_rows(pairs: Sequence[Pair], seq_len: int, pack: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, seq_len + 1) int32, loss mask (n, seq_len) float32) of the pairs in order."""
    rows: list[list[int]] = []
    masks: list[list[int]] = []  # per token of the row: 1 where it is a response token
    for p in pairs:
        toks = p.prompt + p.response
        if not rows or not pack or len(rows[-1]) + len(toks) > seq_len + 1:
            rows.append([])
            masks.append([])
        rows[-1].extend(toks)
        masks[-1].extend([0] * len(p.prompt) + [1] * len(p.response))
    out = np.zeros((len(rows), seq_len + 1), np.int32)
    is_resp = np.zeros((len(rows), seq_len + 1), np.float32)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        out[i, : len(r)] = r
        is_resp[i, : len(m)] = m
    return out, is_resp[:, 1:]


# ----------------------------------------------------------------------------- classify


@dataclass(frozen=True)
class Labelled:
    """Classify examples: tokens (n, seq_len) int32, lengths (n,), label indices (n,)."""

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray


def label_names(train: Sequence[dict]) -> list[str]:
    names = sorted({r["label"] for r in train})
    if len(names) < 2:
        raise UsageError(f"classification needs at least two labels in the training split, got {names}")
    return names


def encode_labelled(
    records: Sequence[dict], encode: Callable[[str], list[int]], names: Sequence[str], seq_len: int
) -> Labelled:
    """The records' first ``seq_len`` tokens with their label indices; a label the training
    split lacks, or an empty text, is refused."""
    index = {n: i for i, n in enumerate(names)}
    toks = np.zeros((len(records), seq_len), np.int32)
    lengths = np.zeros(len(records), np.int32)
    labels = np.zeros(len(records), np.int32)
    for i, r in enumerate(records):
        if r["label"] not in index:
            raise UsageError(f"held-out label {r['label']!r} does not occur in the training split")
        ids = encode(r["text"])[:seq_len]
        if not ids:
            raise UsageError(f"record with label {r['label']!r} has an empty text")
        toks[i, : len(ids)] = ids
        lengths[i], labels[i] = len(ids), index[r["label"]]
    return Labelled(toks, lengths, labels)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The examples of step ``step``: epochs of seeded permutations, read in order (a batch may
    span two epochs), so any step's batch follows from (seed, step) alone."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out, np.int64)
