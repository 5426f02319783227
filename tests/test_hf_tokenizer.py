"""The gpt2 and byte vocabularies as Hugging Face tokenizer files: transformers and the
tokenizers library read them into tokenizers that give the project's tiktoken ids for any text
and decode them back."""

from __future__ import annotations

import os

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("CI") == "true":  # in CI the readers must run
    import tokenizers
    import transformers
else:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")

from scaling import tokenizer as tok  # noqa: E402
from scaling.errors import UsageError  # noqa: E402
from scaling.inference import hf_tokenizer  # noqa: E402
from tests.helpers import data_path  # noqa: E402

ODD = "  héllo\twörld\r\n\n日本語 🤖 don't<|endoftext|>x\x00\x7f\u00ad  "


def _gpt2() -> tiktoken.Encoding:
    try:
        return tok.gpt2_encoding()
    except UsageError:
        if os.environ.get("CI") == "true":
            pytest.fail("r50k_base is not in TIKTOKEN_CACHE_DIR in CI")
        pytest.skip("no TIKTOKEN_CACHE_DIR with r50k_base")


def _encoding(name: str) -> tiktoken.Encoding:
    return _gpt2() if name == "gpt2" else tok.byte_encoding()


@pytest.fixture(scope="module")
def files():
    """Each vocabulary's files, made once (gpt2's merges take about a second to recover)."""
    made = {}

    def get(name: str) -> dict[str, str]:
        if name not in made:
            _encoding(name)
            made[name] = hf_tokenizer.tokenizer_files(name, 128)
        return made[name]

    return get


def test_byte_symbols_are_gpt2s_stand_ins():
    symbols = hf_tokenizer.byte_symbols()
    assert len(set(symbols)) == 256
    assert symbols[ord("A")] == "A" and symbols[ord("~")] == "~" and symbols[0xE9] == "é"
    assert symbols[ord(" ")] == "Ġ" and symbols[ord("\n")] == "Ċ" and symbols[0] == "Ā"


def test_gpt2_merges_are_its_first_tokens_in_order(files):
    merges = files("gpt2")["merges.txt"].splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50000
    # ids 256, 257, 258 and 262 are " t", " a", "he" and " the"
    assert merges[1:4] == ["Ġ t", "Ġ a", "h e"] and merges[7] == "Ġt he"


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_transformers_reads_the_files_into_the_projects_tokenizer(tmp_path, files, name):
    for file, text in files(name).items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    enc = _encoding(name)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = data_path("tinyshakespeare", "input.txt").read_text()[:20000] + ODD
    ids = theirs(text)["input_ids"]
    assert ids == enc.encode(text, allowed_special="all")
    assert theirs.decode(ids) == text
    assert theirs.eos_token_id == theirs.bos_token_id == tok.eot_id(enc) == len(theirs) - 1
    assert theirs.model_max_length == 128


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_tokenizer_json_encodes_any_text_as_tiktoken_does(files, name):
    enc = _encoding(name)
    theirs = tokenizers.Tokenizer.from_str(files(name)["tokenizer.json"])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=80) | st.sampled_from([ODD, "", " ", "\n\n\n", "<|endoftext|><|endoftext|>"]))
    def same(text):
        ids = theirs.encode(text).ids
        assert ids == enc.encode(text, allowed_special="all")
        assert theirs.decode(ids, skip_special_tokens=False) == text

    same()


def test_only_gpt2_and_byte_have_files():
    with pytest.raises(UsageError, match="gpt2 or byte only"):
        hf_tokenizer.tokenizer_files("bpe:300", 64)
