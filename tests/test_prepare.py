"""python -m experiments.prepare against a local HTTP server: cleaning, checksums, resumed and
failed downloads (nothing half-used, nothing left in place), Hugging Face datasets as shards."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from experiments import prepare as prepare_cli
from scaling.config import DataConfig
from scaling.data import corpus_documents
from scaling.data.prepare import PARTIAL, clean_gutenberg

BODY = "Chapter {i}\n\n" + " ".join(["It was a dark and stormy night; the rain fell in torrents."] * 200) + "\n"


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` when ``server.ranges``; a path in
    ``server.drop_once`` gets half its body, then the connection is closed, the first time."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and srv.ranges else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if self.path in srv.drop_once:
            srv.drop_once.discard(self.path)
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.log, srv.drop_once, srv.ranges = {}, [], set(), True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def pg_raw(i: int, text: str) -> bytes:
    """A Project Gutenberg file around ``text``: header, credits, footer, CRLF line endings."""
    raw = (
        f"\ufeffThe Project Gutenberg EBook of Book {i}\n\nRelease Date: 2001 [EBook #{i}]\n\n"
        f"*** START OF THIS PROJECT GUTENBERG EBOOK BOOK {i} ***\n\n\n\nProduced by A. Volunteer\nand others\n\n\n"
        f"{text}\n\n\nEnd of the Project Gutenberg EBook of Book {i}\n\n"
        f"*** END OF THIS PROJECT GUTENBERG EBOOK BOOK {i} ***\n\nLicense text.\n"
    )
    return raw.replace("\n", "\r\n").encode("utf-8")


def make_books(srv, tmp_path, ids=(11, 12, 13), wrong=()):
    """Serve one raw book per id; write a manifest of their cleaned texts (a wrong sha256 for
    the ids in ``wrong``); returns the manifest path and the cleaned texts."""
    docs, texts = [], {}
    for i in ids:
        text = BODY.format(i=i)
        srv.files[f"/books/{i}.txt"] = pg_raw(i, text)
        data = text.encode()
        digest = hashlib.sha256(b"other" if i in wrong else data).hexdigest()
        docs.append({"path": f"gutenberg/{i}.txt", "id": i, "title": f"Book {i}", "bytes": len(data), "sha256": digest})
        texts[i] = text
    shakespeare = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    srv.files["/input.txt"] = shakespeare
    ts_doc = {"path": "tinyshakespeare/input.txt", "id": None, "title": "tiny-shakespeare", "source": None}
    ts_doc |= {"bytes": len(shakespeare), "sha256": hashlib.sha256(shakespeare).hexdigest()}
    manifest = {
        "format": 1,
        "corpora": {
            "gutenberg": {"archive": "gutenberg.tar.xz", "path": "gutenberg", "documents": docs},
            "tinyshakespeare": {"archive": "t.tar.xz", "path": "tinyshakespeare/input.txt", "documents": [ts_doc]},
        },
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path, texts


def prepare(*args):
    prepare_cli.main([str(a) for a in args])


def test_clean_gutenberg_strips_header_footer_credits_and_crlf():
    text = "TITLE\n\n  An indented line   \nthe end."
    assert clean_gutenberg(pg_raw(7, text)) == "TITLE\n\n  An indented line\nthe end.\n"
    cp1252 = b"*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\nnote \x86 here\r\n*** END OF THE PROJECT GUTENBERG"
    assert clean_gutenberg(cp1252) == "note \u2020 here\n"


def test_gutenberg_resumes_a_dropped_connection_and_a_killed_run(server, tmp_path, capsys):
    manifest, texts = make_books(server, tmp_path)
    out = tmp_path / "data"
    server.drop_once.add("/books/11.txt")
    # A run killed while downloading book 13 left the first 100 bytes in its .part file.
    stage = out / PARTIAL / "gutenberg"
    stage.mkdir(parents=True)
    (stage / "13.txt.raw.part").write_bytes(server.files["/books/13.txt"][:100])
    prepare("gutenberg", "--out", out, "--manifest", manifest, "--mirror", server.url + "/books/{id}.txt")
    for i, text in texts.items():
        assert (out / "gutenberg" / f"{i}.txt").read_text() == text
    assert sorted(p.name for p in (out / "gutenberg").iterdir()) == ["11.txt", "12.txt", "13.txt", "manifest.json"]
    assert not (out / PARTIAL).exists()
    half = len(server.files["/books/11.txt"]) // 2
    assert server.log.count(("/books/11.txt", None)) == 1 and ("/books/11.txt", f"bytes={half}-") in server.log
    assert ("/books/13.txt", "bytes=100-") in server.log and ("/books/13.txt", None) not in server.log
    assert "gutenberg: 3 documents" in capsys.readouterr().out
    docs = corpus_documents(DataConfig(corpus=str(out / "gutenberg")))
    assert [d.read() for d in docs] == [texts[i] for i in (11, 12, 13)]
    # Prepared already: checked and left alone, nothing fetched.
    n = len(server.log)
    prepare("gutenberg", "--out", out, "--manifest", manifest, "--mirror", server.url + "/books/{id}.txt")
    assert len(server.log) == n


def test_a_server_without_range_support_restarts_the_download(server, tmp_path):
    manifest, _ = make_books(server, tmp_path, ids=(11,))
    server.ranges = False
    server.drop_once.add("/input.txt")
    out = tmp_path / "data"
    prepare("tinyshakespeare", "--out", out, "--manifest", manifest, "--mirror", server.url + "/input.txt")
    assert (out / "tinyshakespeare" / "input.txt").read_bytes() == server.files["/input.txt"]
    assert len(server.log) == 2 and server.log[1][1] is not None  # asked for a range, got the whole file


def test_wrong_checksum_exits_2_and_leaves_nothing_in_place(server, tmp_path, capsys):
    manifest, _ = make_books(server, tmp_path, wrong=(12,))
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        prepare("gutenberg", "--out", out, "--manifest", manifest, "--mirror", server.url + "/books/{id}.txt")
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "checksum mismatch for book 12" in err
    assert not (out / "gutenberg").exists()
    assert sorted(p.name for p in (out / PARTIAL / "gutenberg").iterdir()) == ["11.txt"]  # kept for the next run

    (tmp_path / "bad").mkdir()
    server.files["/input.txt"] = b"not what the manifest says\n"
    with pytest.raises(SystemExit) as e:
        prepare(
            "tinyshakespeare", "--out", tmp_path / "bad", "--manifest", manifest, "--mirror", server.url + "/input.txt"
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "checksum mismatch" in err
    assert [p for p in (tmp_path / "bad").rglob("*") if p.is_file()] == []


def test_missing_file_and_differing_corpus_are_one_line_errors(server, tmp_path, capsys):
    manifest, _ = make_books(server, tmp_path, ids=(11,))
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        prepare("gutenberg", "--out", out, "--manifest", manifest, "--mirror", server.url + "/nowhere/{id}.txt")
    assert e.value.code == 2 and "HTTP 404" in capsys.readouterr().err
    (out / "gutenberg").mkdir(parents=True)
    (out / "gutenberg" / "11.txt").write_text("my own edition\n")
    with pytest.raises(SystemExit) as e:
        prepare("gutenberg", "--out", out, "--manifest", manifest, "--mirror", server.url + "/books/{id}.txt")
    assert e.value.code == 2 and "differs from the manifest" in capsys.readouterr().err
    assert (out / "gutenberg" / "11.txt").read_text() == "my own edition\n"
    for bad in (["gutenberg", "--mirror", "http://x/no-id.txt"], ["wikipedia"]):
        with pytest.raises(SystemExit) as e:
            prepare(*bad, "--out", out, "--manifest", manifest)
        assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hf_dataset_to_shards_read_back_as_a_corpus(tmp_path, monkeypatch, fmt):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    records = [{"body": f"record {i} " * (5 + i), "n": i} for i in range(30)]
    for part in range(2):
        rows = records[part * 15 : (part + 1) * 15]
        (src / "data" / f"test-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "data"
    spec = f"hf:{src}"
    prepare(spec, "--split", "test", "--text-column", "body", "--format", fmt, "--shard-mb", "0.0005", "--out", out)
    dest = out / "src-test"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["records"] == 30 and len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        assert hashlib.sha256((dest / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    docs = corpus_documents(DataConfig(corpus=str(dest)))
    assert [d.read() for d in docs] == [r["body"] for r in records]
    assert not (out / PARTIAL).exists()
