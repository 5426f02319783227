"""The Hugging Face tokenizer files of the ``gpt2`` and ``byte`` vocabularies, for a GPT-2 export.

An export carries its vocabulary in the files ``GPT2Tokenizer.save_pretrained`` reads:
``vocab.json`` and ``merges.txt`` (GPT-2's byte-level BPE), ``tokenizer.json`` (the same model
for the ``tokenizers`` library, which transformers' fast tokenizers load) and
``tokenizer_config.json`` (the end-of-text token as bos, eos and unk; the model's context as
``model_max_length``). So ``transformers.AutoTokenizer.from_pretrained(DIR)`` encodes a text to
the ids the project's tiktoken encoding gives it, and decodes them back.

- ``gpt2``: r50k_base's 50,256 ranks are GPT-2's ids; merge ``i`` (``merges.txt`` line ``i``)
  made id ``256 + i``, so each merge is recovered from its token by running BPE over the
  token's bytes with the ranks below its own, which ends in exactly two parts.
- ``byte``: ids 0-255 are the bytes themselves and there are no merges, so every byte of a text
  is one token whatever the pre-tokenisation splits; end-of-text is 256.

Tokens are written with GPT-2's printable stand-ins for bytes (:func:`byte_symbols`), as
``vocab.json`` and ``merges.txt`` have them.
"""

from __future__ import annotations

import json
from functools import cache

import tiktoken

from scaling import tokenizer as tok
from scaling.errors import UsageError

__all__ = ["FILES", "byte_symbols", "merges_of", "tokenizer_files"]

FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
"""What :func:`tokenizer_files` writes, in the order an export writes them."""


@cache
def byte_symbols() -> tuple[str, ...]:
    """GPT-2's stand-in character for each byte value: the printable Latin-1 bytes stand for
    themselves, the others (controls, space, the soft hyphen) for 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return tuple(symbols[b] for b in range(256))


def _symbols(token: bytes) -> str:
    table = byte_symbols()
    return "".join(table[b] for b in token)


def _last_merge(token: bytes, ranks: dict[bytes, int], below: int) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make ``token``, merging by lowest rank among ranks < ``below``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = below, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], below)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise UsageError(f"the vocabulary's token {token!r} is not the merge of two tokens of lower rank")
    return parts[0], parts[1]


def merges_of(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """``merges.txt``'s pairs, in rank order, of a byte-level BPE whose ranks are its ids."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = _last_merge(token, ranks, rank)
            merges.append((_symbols(a), _symbols(b)))
    return merges


def _encoding(name: str) -> tiktoken.Encoding:
    if name == "gpt2":
        return tok.gpt2_encoding()  # UsageError, naming TIKTOKEN_CACHE_DIR, where r50k_base is missing
    if name == "byte":
        return tok.byte_encoding()
    raise UsageError(f"no Hugging Face tokenizer files for data.tokenizer={name} (gpt2 or byte only)")


def tokenizer_files(name: str, model_max_length: int) -> dict[str, str]:
    """The text of each of :data:`FILES` for the ``name`` vocabulary (``gpt2`` or ``byte``)."""
    enc = _encoding(name)
    ranks = enc._mergeable_ranks  # tiktoken keeps no public accessor for the ranks
    eot = tok.eot_id(enc)
    vocab = {_symbols(token): rank for token, rank in ranks.items()}
    merges = merges_of(ranks)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    fast = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": eot, "content": tok.EOT, **special}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(pair) for pair in merges],
        },
    }
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tok.EOT,
        "eos_token": tok.EOT,
        "unk_token": tok.EOT,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    return {
        "vocab.json": json.dumps({**vocab, tok.EOT: eot}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer.json": json.dumps(fast, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }
