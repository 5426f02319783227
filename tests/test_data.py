"""The data pipeline: document split, deterministic batches, caches, hf datasets."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.config import DataConfig
from scaling.data import Batches, corpus_documents, load_tokens
from scaling.errors import UsageError
from scaling.evaluation import bits_per_byte
from tests.helpers import data_path


def _docs(tmp_path, n=12):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(f"<doc {i:02d}> " + f"words of document {i:02d}. " * 40)
    return d


def test_validation_split_shares_no_document_with_training(tmp_path):
    splits = load_tokens(DataConfig(corpus=str(_docs(tmp_path)), tokenizer="byte", val_fraction=0.25))
    enc = splits.encoding
    train_text = enc.decode(np.asarray(splits.train).tolist())
    val_text = enc.decode(np.asarray(splits.val).tolist())
    train_ids = {int(t.split(">")[0]) for t in train_text.split("<doc ")[1:]}
    val_ids = {int(t.split(">")[0]) for t in val_text.split("<doc ")[1:]}
    assert len(val_ids) == 3 and len(train_ids) == 9 and not train_ids & val_ids
    assert {f"doc{i:02d}.txt" for i in val_ids} == {p.split("/")[-1] for p in splits.manifest["val_documents"]}
    assert splits.manifest["split"] == "documents"
    assert train_text.count("<|endoftext|>") == 9  # one end-of-text after every document


def test_gutenberg_split_is_by_whole_books():
    d = data_path("gutenberg")
    splits = load_tokens(DataConfig(corpus=str(d), tokenizer="byte"))
    n_docs = len(list(d.glob("*.txt")))
    assert splits.manifest["n_documents"] == n_docs
    assert 1 <= len(splits.manifest["val_documents"]) < n_docs
    val_bytes = sum(len((d / p.split("/")[-1]).read_bytes()) for p in splits.manifest["val_documents"])
    assert splits.manifest["n_val_tokens"] == val_bytes + len(splits.manifest["val_documents"])


def test_one_document_corpus_holds_out_the_tail():
    path = data_path("tinyshakespeare", "input.txt")
    splits = load_tokens(DataConfig(corpus=str(path), tokenizer="byte", val_fraction=0.1))
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    n = len(raw) + 1
    assert splits.manifest["split"] == "tail" and len(splits.val) == int(n * 0.1)
    np.testing.assert_array_equal(np.asarray(splits.train), raw[: len(splits.train)])


def test_batches_are_a_pure_function_of_seed_and_step():
    splits = load_tokens(DataConfig(tokenizer="byte"))
    a, b = Batches(splits, 32, 8, seed=3), Batches(splits, 32, 8, seed=3)
    for step in (0, 7, 10_000):
        np.testing.assert_array_equal(a.train_batch(step), b.train_batch(step))
        # a process's rows are the same rows of the global batch
        np.testing.assert_array_equal(a.train_batch(step, 2, 6), a.train_batch(step)[2:6])
    assert not np.array_equal(a.train_batch(0), Batches(splits, 32, 8, seed=4).train_batch(0))
    x = a.train_batch(5)
    assert x.shape == (8, 33) and x.dtype == np.int32
    # windows are consecutive tokens of the training split
    start = a.window_starts(5)[0]
    np.testing.assert_array_equal(x[0], np.asarray(splits.train[start : start + 33]))


def test_an_epoch_visits_every_window_once_at_one_shift():
    splits = load_tokens(DataConfig(tokenizer="byte"))
    b = Batches(splits, 256, 16, seed=0)
    per_epoch = b.n_windows // 16
    seen = np.concatenate([b.window_starts(t) for t in range(per_epoch)])
    assert len(np.unique(seen)) == len(seen) == per_epoch * 16
    assert len(np.unique(seen % 256)) == 1  # one shift per epoch
    assert seen.max() + 257 <= len(splits.train)
    next_epoch = np.concatenate([b.window_starts(t) for t in range(per_epoch + 1, 2 * per_epoch)])
    assert len(np.unique(next_epoch % 256)) == 1 and (next_epoch % 256)[0] != (seen % 256)[0]
    assert b.epochs(b.n_windows * 256 * 2) == pytest.approx(2.0)


def test_validation_batches_are_fixed_and_bits_per_byte_is_exact():
    splits = load_tokens(DataConfig(tokenizer="gpt2"))
    b = Batches(splits, 64, 4, seed=0)
    v1, v2 = list(b.val_batches(3)), list(Batches(splits, 64, 4, seed=9).val_batches(3))
    for x, y in zip(v1, v2):
        np.testing.assert_array_equal(x, y)
    enc = splits.encoding
    n_bytes = sum(len(enc.decode_bytes(row[1:].tolist())) for x in v1 for row in x)
    assert b.val_target_bytes(3) == n_bytes
    assert bits_per_byte(2.0, 1000, 4000) == pytest.approx(2.0 * 1000 / (np.log(2) * 4000))


def test_hf_dataset_corpus(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [f"record {i} " * 30 for i in range(20)], "id": list(range(20))})
    ds.save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(corpus=f"hf:{tmp_path / 'ds'}", tokenizer="byte", val_fraction=0.2)
    assert len(corpus_documents(cfg)) == 20
    splits = load_tokens(cfg)
    assert len(splits.manifest["val_documents"]) == 4
    with pytest.raises(UsageError, match="no text field"):
        corpus_documents(DataConfig(corpus=f"hf:{tmp_path / 'ds'}", hf_text_field="body"))


def test_bad_corpora_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="corpus not found"):
        corpus_documents(DataConfig(corpus=str(tmp_path / "nope.txt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="corpus is empty"):
        corpus_documents(DataConfig(corpus=str(tmp_path / "empty")))
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(UsageError, match="corpus is empty"):
        load_tokens(DataConfig(corpus=str(tmp_path / "blank.txt")))
