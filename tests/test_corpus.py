"""Corpora: the embedded named corpora (the shared directory's documents, extracted once,
checked), named corpora under SCALING_DATA_DIR, JSONL and Parquet records, directories read
recursively, Hugging Face specs with configuration and split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from scaling.config import DataConfig
from scaling.data import corpus_documents, packaged
from scaling.data.embed import build
from scaling.data.hf import HFSpec, parse_hf_spec
from scaling.errors import UsageError
from scaling.paths import cache_dir
from tests.helpers import data_path


def texts(corpus: str, **kw) -> list[str]:
    return [d.read() for d in corpus_documents(DataConfig(corpus=corpus, **kw))]


@pytest.mark.parametrize("name", ["gutenberg", "tinyshakespeare"])
def test_embedded_corpus_equals_the_shared_directory(name, monkeypatch):
    """Same documents, order and text: the validation split and the token cache are today's."""
    shared = data_path(*packaged.NAMED_CORPORA[name].split("/"))
    shared_docs = corpus_documents(DataConfig(corpus=str(shared)))
    monkeypatch.delenv("SCALING_DATA_DIR", raising=False)
    docs = corpus_documents(DataConfig(corpus=name))
    embedded = packaged.packaged_path(name)
    assert embedded.is_relative_to(cache_dir() / "corpora")

    def names(docs, path):
        return [Path(d.name).relative_to(path if path.is_dir() else path.parent) for d in docs]

    assert names(docs, embedded) == names(shared_docs, shared)
    assert all(a.read() == b.read() for a, b in zip(docs, shared_docs, strict=True))


def test_embedded_manifest_describes_its_archives():
    manifest = packaged.load_manifest()
    assert set(manifest["corpora"]) == set(packaged.NAMED_CORPORA)
    for name, entry in manifest["corpora"].items():
        archive = (packaged.corpora_dir() / entry["archive"]).read_bytes()
        assert hashlib.sha256(archive).hexdigest() == entry["archive_sha256"]
        assert entry["path"] == packaged.NAMED_CORPORA[name]
        for doc in entry["documents"]:
            assert doc["title"] and len(doc["sha256"]) == 64 and doc["bytes"] > 0
            assert doc["path"].startswith(entry["path"])
    books = manifest["corpora"]["gutenberg"]["documents"]
    assert [d["path"] for d in books] == sorted(d["path"] for d in books)
    assert all(d["path"] == f"gutenberg/{d['id']}.txt" for d in books)


@pytest.fixture
def tiny_package(tmp_path, monkeypatch):
    """A package's corpora folder built from a tiny data directory, used in place of the real one."""
    src = tmp_path / "src"
    (src / "gutenberg").mkdir(parents=True)
    (src / "tinyshakespeare").mkdir()
    (src / "tinyshakespeare" / "input.txt").write_text("First Citizen:\nSpeak, speak.\n")
    for i in (7, 12, 100):
        (src / "gutenberg" / f"{i}.txt").write_text(f"\n  BOOK {i}\n\nText of book {i}.\n")
    out = tmp_path / "corpora"
    build(src, out, preset=0)
    monkeypatch.setattr(packaged, "corpora_dir", lambda: out)
    monkeypatch.delenv("SCALING_DATA_DIR", raising=False)
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    return src, out


def test_extraction_is_checked_atomic_and_repaired(tiny_package, tmp_path):
    src, out = tiny_package
    entry = packaged.corpus_entry("gutenberg")
    assert [(d["id"], d["title"]) for d in entry["documents"]] == [(100, "BOOK 100"), (12, "BOOK 12"), (7, "BOOK 7")]
    first = out.joinpath("gutenberg.tar.xz").read_bytes()
    build(src, out, preset=0)
    assert out.joinpath("gutenberg.tar.xz").read_bytes() == first  # reproducible archives

    expected = [(src / "gutenberg" / f"{i}.txt").read_text() for i in (100, 12, 7)]
    assert texts("gutenberg") == expected
    assert texts("tinyshakespeare") == ["First Citizen:\nSpeak, speak.\n"]
    path = packaged.packaged_path("gutenberg")
    corpora = tmp_path / "cache" / "corpora"
    (path / "12.txt").write_text("damaged")
    (corpora / f".tmp-{path.parent.name}-0000").mkdir()  # a killed extraction's leftover
    assert texts("gutenberg") == expected  # a changed copy is extracted again

    def listing():
        return sorted(p.name for p in corpora.iterdir() if not p.name.endswith(".lock"))

    before = listing()
    assert [n.split("-")[0] for n in before] == ["gutenberg", "tinyshakespeare"]  # the leftover is gone

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["corpora"]["gutenberg"]["documents"][1]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="12.txt fails its checksum"):
        corpus_documents(DataConfig(corpus="gutenberg"))
    assert listing() == before  # nothing partial left behind


def test_named_corpus_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_DATA_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="experiments.prepare tinyshakespeare"):
        corpus_documents(DataConfig(corpus="tinyshakespeare"))
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("mine\n")
    assert texts("tinyshakespeare") == ["mine\n"]


def test_directories_of_text_jsonl_and_parquet_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    d = tmp_path / "corpus"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "a.txt").write_text("plain text\n")
    (d / "notes.md").write_text("not a document\n")
    (d / "sub" / "b.jsonl").write_text('{"body": "b0", "x": 1}\n\n{"body": "b1"}\n')
    pq.write_table(pa.table({"body": ["c0", "c1"], "n": [0, 1]}), d / "sub" / "deeper" / "c.parquet")
    assert texts(str(d), hf_text_field="body") == ["plain text\n", "b0", "b1", "c0", "c1"]
    assert texts(str(d / "sub" / "b.jsonl"), hf_text_field="body") == ["b0", "b1"]
    assert texts(str(d / "sub" / "**" / "*.parquet"), hf_text_field="body") == ["c0", "c1"]
    with pytest.raises(UsageError, match="b.jsonl:1: no text field 'text'"):
        corpus_documents(DataConfig(corpus=str(d)))
    (d / "sub" / "b.jsonl").write_text('{"body": "b0"}\nnot json\n')
    with pytest.raises(UsageError, match="b.jsonl:2: not a JSON object"):
        corpus_documents(DataConfig(corpus=str(d), hf_text_field="body"))
    with pytest.raises(UsageError, match="no text column 'text'"):
        corpus_documents(DataConfig(corpus=str(d / "sub" / "deeper" / "c.parquet")))


def test_hf_specs_parse_name_config_and_split(tmp_path):
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1@validation") == HFSpec(
        "wikitext", "wikitext-2-raw-v1", "validation"
    )
    assert parse_hf_spec("hf:user/data@test") == HFSpec("user/data", None, "test")
    odd = tmp_path / "a:b@c"
    odd.mkdir()
    assert parse_hf_spec(f"hf:{odd}") == HFSpec(str(odd))
    assert parse_hf_spec(f"hf:{odd}@train") == HFSpec(str(odd), None, "train")
    for bad in ("hf:", "hf:name@", "hf:name:@x"):
        with pytest.raises(UsageError, match="bad dataset spec"):
            parse_hf_spec(bad)


def test_hf_corpus_streams_a_configuration_and_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "repo"
    for config in ("small", "big"):
        for split in ("train", "test"):
            (repo / config).mkdir(parents=True, exist_ok=True)
            rows = [{"text": f"{config} {split} {i}"} for i in range(3)]
            (repo / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cards = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.jsonl\n"
        f"  - split: test\n    path: {c}/test.jsonl\n"
        for c in ("small", "big")
    )
    (repo / "README.md").write_text(f"---\nconfigs:\n{cards}---\n")
    assert texts(f"hf:{repo}:big@test") == ["big test 0", "big test 1", "big test 2"]
    assert texts(f"hf:{repo}:small") == ["small train 0", "small train 1", "small train 2"]
    with pytest.raises(UsageError, match="cannot load dataset"):
        corpus_documents(DataConfig(corpus=f"hf:{repo}:small@nosuchsplit"))
    saved = tmp_path / "saved"
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"t": [f"{s}{i}" for i in range(2)]}) for s in ("a", "b")})
    dd.save_to_disk(str(saved))
    assert texts(f"hf:{saved}@b", hf_text_field="t") == ["b0", "b1"]
    assert texts(f"hf:{saved}", hf_text_field="t") == ["a0", "a1"]  # no train split: the first
