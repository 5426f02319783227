"""Tokenizers, every one a ``tiktoken.Encoding`` with ``<|endoftext|>`` as its last id.

- ``byte``: the 256 single-byte ranks (ids 0..255), end-of-text 256.
- ``gpt2``: the r50k_base ranks through tiktoken's own cache: read from ``TIKTOKEN_CACHE_DIR``
  when it is set (offline), else downloaded once into tiktoken's default cache
  (``$TMPDIR/data-gym-cache``) and read from there; end-of-text 50256.
- ``bpe:<vocab>``: byte-level BPE trained on a corpus's training split with GPT-2's
  pre-tokenisation; ``vocab`` ids in all (vocab - 1 ranks, then end-of-text). Saved as a
  ``.tiktoken`` file in the cache directory and loaded from there next time.
"""

from __future__ import annotations

import base64
import collections
import heapq
import os
from collections.abc import Iterable
from pathlib import Path

import regex
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from scaling.errors import UsageError
from scaling.io import atomic_write_text
from scaling.paths import cache_dir

EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern (r50k_base).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The byte tokenizer has no merges, so pieces only need to be bounded in length.
BYTE_PATTERN = r"""[\s\S]{1,1024}"""


def byte_encoding() -> tiktoken.Encoding:
    ranks = {bytes([i]): i for i in range(256)}
    return tiktoken.Encoding(name="byte", pat_str=BYTE_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 256})


def gpt2_encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:  # not in the cache, and the download failed
        where = os.environ.get("TIKTOKEN_CACHE_DIR") or "tiktoken's default cache"
        raise UsageError(
            f"gpt2 tokenizer unavailable: r50k_base is not in {where} and could not be downloaded "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "set TIKTOKEN_CACHE_DIR to a cache that holds it"
        ) from None


def parse_bpe_vocab(name: str) -> int:
    try:
        vocab = int(name.split(":", 1)[1])
    except ValueError:
        raise UsageError(f"bad tokenizer {name!r}: expected bpe:<vocab size>") from None
    if not 258 <= vocab <= 65535:
        raise UsageError(f"bpe vocab size must be in [258, 65535], got {vocab}")
    return vocab


def check_name(name: str) -> None:
    """Raise UsageError for a tokenizer name that is not byte, gpt2 or bpe:<vocab>."""
    if name in ("byte", "gpt2"):
        return
    if name.startswith("bpe:"):
        parse_bpe_vocab(name)
        return
    raise UsageError(f"unknown tokenizer {name!r} (expected byte, gpt2 or bpe:<vocab>)")


BYTE_VOCAB = 256 + 1  # the byte ranks and end-of-text
GPT2_VOCAB = 50257  # r50k_base: 50256 ranks and end-of-text


def vocab_size(name: str) -> int:
    """The number of ids of tokenizer ``name`` (end-of-text included), without building it."""
    check_name(name)
    if name == "byte":
        return BYTE_VOCAB
    if name == "gpt2":
        return GPT2_VOCAB
    return parse_bpe_vocab(name)


def train_bpe(texts: Iterable[str], vocab: int) -> dict[bytes, int]:
    """Byte-level BPE ranks: the 256 bytes, then ``vocab - 257`` merges in training order.

    Words come from GPT-2's pre-tokenisation; pair counts are kept up to date
    incrementally (only the words containing the merged pair are revisited), and the best
    pair is taken from a lazy max-heap, ties broken by the smaller pair of byte strings.
    """
    counts: collections.Counter[str] = collections.Counter()
    pat = regex.compile(GPT2_PATTERN)
    for text in texts:
        counts.update(pat.findall(text))
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in counts]
    freqs = list(counts.values())
    pair_count: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
    where: dict[tuple[bytes, bytes], set[int]] = collections.defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_count[p] += f
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab - 1 and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        merged = pair[0] + pair[1]
        if merged not in ranks:
            ranks[merged] = len(ranks)
        touched: set[tuple[bytes, bytes]] = set()
        for i in list(where[pair]):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                touched.add(p)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(i)
                touched.add(p)
        del where[pair]
        pair_count.pop(pair, None)
        for p in touched:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
    return ranks


def save_ranks(ranks: dict[bytes, int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    atomic_write_text(path, "\n".join(lines) + "\n")


def bpe_encoding(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name=name.replace(":", "-"), pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
    )


def get_tokenizer(name: str, train_texts=None, corpus_key: str = "") -> tiktoken.Encoding:
    """The tokenizer ``name``; ``bpe:<vocab>`` needs ``train_texts`` (a callable returning
    an iterable of training texts) and ``corpus_key`` (names the cached ranks file) unless
    that file exists already."""
    check_name(name)
    if name == "byte":
        return byte_encoding()
    if name == "gpt2":
        return gpt2_encoding()
    vocab = parse_bpe_vocab(name)
    path = bpe_path(vocab, corpus_key)
    if not path.is_file():
        if train_texts is None:
            raise UsageError(f"tokenizer {name} has not been trained for this corpus ({path} missing)")
        save_ranks(train_bpe(train_texts(), vocab), path)
    return bpe_encoding(name, load_tiktoken_bpe(str(path)))


def bpe_path(vocab: int, corpus_key: str) -> Path:
    return cache_dir() / "tokenizers" / f"bpe{vocab}-{corpus_key}.tiktoken"


def eot_id(enc: tiktoken.Encoding) -> int:
    return enc.encode_single_token(EOT)


def token_byte_lengths(enc: tiktoken.Encoding) -> list[int]:
    """UTF-8 bytes each id stands for (0 for end-of-text): the denominator of bits per byte."""
    eot = eot_id(enc)
    return [0 if i == eot else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
