"""Every class of bad input ends with one line on stderr and exit code 2, before any compute,
with existing outputs untouched: out-of-range numbers in config fields, config YAML of the
wrong shape, unreadable files and unusable output paths, sampling parameters and lengths
that cannot run, malformed safetensors and index files. A fit to data that give no valid
scaling law is written with a ``degenerate`` flag, never NaN. Property-based tests throw
random overrides and random YAML at the config parser: a valid Config or a UsageError."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis import fit as fit_cli
from experiments import evaluate as evaluate_cli
from experiments import generate as generate_cli
from experiments import sweep as sweep_cli
from experiments import train as train_cli
from scaling import config as config_lib
from scaling import config_parse, laws
from scaling.errors import UsageError
from scaling.fields import INT64_MAX, INT64_MIN
from scaling.sweep.spec import SPEC_KEYS, load_spec
from tests.helpers import REPO, TINY, run_cli

# ----------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), to compare before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails_with_one_line(capsys, main, argv, message: str) -> str:
    """Run an entry point in-process; assert exit code 2, exactly one non-empty stderr line
    holding ``message``, no traceback, nothing on stdout. Returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    r = capsys.readouterr()
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert e.value.code == 2, r.err
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert "Traceback" not in r.err and message in lines[0], lines[0]
    assert r.out == ""
    return lines[0]


@pytest.fixture
def run_out(tmp_path):
    """A run directory holding earlier outputs that bad input must leave as they are."""
    out = tmp_path / "run"
    (out / "checkpoints" / "100").mkdir(parents=True)
    (out / "summary.json").write_text('{"status": "completed"}\n')
    (out / "config.yaml").write_text("model: {n_layer: 2}\n")
    (out / "checkpoints" / "100" / "state").write_bytes(b"\x00\x01precious")
    return out


# ----------------------------------------------------------------------------- numbers in config fields

NUMBERS = [
    (["--train.tokens", "inf"], "--train.tokens expects an integer, got 'inf'"),
    (["--train.tokens", "nan"], "--train.tokens expects an integer, got 'nan'"),
    (["--train.tokens", "12345678901234567890"], "--train.tokens is out of the 64-bit integer range"),
    (["--train.tokens", "1e30"], "--train.tokens is out of the 64-bit integer range"),
    (["--train.tokens", "20480.5"], "--train.tokens expects an integer"),
    (["--train.tokens", ""], "--train.tokens expects an integer"),
    (["--train.seed", "-1"], "train.seed must be in [0, 4294967295], got -1"),
    (["--train.seed", "4294967296"], "train.seed must be in [0, 4294967295]"),
    (["--train.seed", "99999999999999999999999"], "--train.seed is out of the 64-bit integer range"),
    (["--model.rope_theta", "0", "--model.position", "rotary"], "model.rope_theta must be > 0, got 0.0"),
    (["--model.rope_theta=-inf"], "model.rope_theta must be a finite number"),
    (["--model.rope_theta", "-inf"], "argument --model.rope_theta: expected one argument"),
    (["--optim.lr", "nan"], "optim.lr must be a finite number, got nan"),
    (["--optim.lr", "1e-400"], "optim.lr must be > 0"),
    (["--optim.beta2", "1"], "optim.beta2 must be in [0, 1), got 1.0"),
    (["--model.dropout", "1.5"], "model.dropout must be in [0, 1)"),
    (["--model.n_layer", "0"], "model.n_layer must be >= 1, got 0"),
    (["--model.d_model", "-32"], "model.d_model must be >= 1"),
    (["--data.val_fraction", "nan"], "data.val_fraction must be a finite number"),
    (["--checkpoint.every_seconds", "inf"], "checkpoint.every_seconds must be a finite number"),
    (["--train.progress", "2"], "--train.progress expects true or false"),
]


@pytest.mark.parametrize("args, message", NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_out_of_range_numbers_in_config_fields(capsys, run_out, args, message):
    before = snapshot(run_out)
    fails_with_one_line(capsys, train_cli.main, ["--out", run_out, *TINY, *args], message)
    assert snapshot(run_out) == before


def test_integers_parse_exactly_or_not_at_all():
    cfg = config_parse.from_dict({"train": {"tokens": "9007199254740993", "seed": "4294967295"}})
    assert cfg.train.tokens == 2**53 + 1 and cfg.train.seed == 2**32 - 1  # float() would give 2**53
    assert config_parse.from_dict({"train": {"tokens": "2e6"}}).train.tokens == 2_000_000
    with pytest.raises(UsageError, match="a float of 2\\*\\*53 or more"):
        config_parse.from_dict({"train": {"tokens": 9007199254740993.0}})  # a YAML float: already rounded
    with pytest.raises(UsageError, match="64-bit"):
        config_parse.from_dict({"train": {"tokens": "1e999999999"}})  # refused without building the integer


def test_dataclasses_check_their_own_fields():
    """Configs built in code (not parsed) are held to the same types and ranges."""
    with pytest.raises(UsageError, match="model.rope_theta must be a finite number"):
        config_lib.ModelConfig(rope_theta=float("nan"))
    with pytest.raises(UsageError, match="model.n_layer must be an integer"):
        config_lib.ModelConfig(n_layer=2.0)
    with pytest.raises(UsageError, match="train.seed must be in"):
        config_lib.TrainConfig(seed=2**32)
    assert type(config_lib.TrainConfig(tokens=np.int64(4096)).tokens) is int


# ----------------------------------------------------------------------------- config YAML of the wrong shape

YAMLS = [
    ("model: [1, 2]\n", "config section model must be a mapping of fields, got a list"),
    ("model: just a string\n", "config section model must be a mapping of fields, got 'just a string'"),
    ("model: {n_layer: {a: 1}}\n", "--model.n_layer expects an integer, got a dict"),
    ("model: {position: [rotary]}\n", "--model.position expects a string, got a list"),
    ("train: {tokens: .inf}\n", "--train.tokens expects an integer, got inf"),
    ("train: {seed: 1.0e+30}\n", "is a float of 2**53 or more"),
    ("optim: {lr: .nan}\n", "optim.lr must be a finite number"),
    ("train: {tokens: " + "9" * 5000 + "}\n", "cannot be parsed"),
    ("model: {bias: 3}\n", "--model.bias expects true or false"),
    ("- model\n- train\n", "must hold a mapping of sections, got a list"),
    ("42\n", "must hold a mapping of sections, got 42"),
    ("model: {n_layer: 2\n", "is not valid YAML"),
    ("model: {n_layer: 2}\n---\ntrain: {}\n", "is not valid YAML"),
    ("foo: {}\n", "unknown config section 'foo'"),
    ("model: {n_layers: 2}\n", "unknown config field model.n_layers (did you mean 'n_layer'?)"),
    ("modle: {n_layer: 2}\n", "unknown config section 'modle' (did you mean 'model'?)"),
    ("{1: 2, model: {}}\n", "unknown config section '1'"),
    (b"model: {n_layer: 2}\n# \xff\xfe latin-1\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize("text, message", YAMLS, ids=[str(i) for i in range(len(YAMLS))])
def test_config_yaml_of_the_wrong_shape(capsys, tmp_path, run_out, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(run_out)
    fails_with_one_line(capsys, train_cli.main, ["--out", run_out, "--config", cfg, *TINY], message)
    assert snapshot(run_out) == before


def test_an_override_does_not_hide_a_malformed_section(tmp_path, capsys, run_out):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: [1, 2]\n")
    fails_with_one_line(
        capsys, train_cli.main, ["--out", run_out, "--config", cfg, *TINY], "config section model must be a mapping"
    )


SPECS = [
    ("base: [1]\ngrid: {models: [1e5], tokens: [1e6]}\n", "base: expected a mapping, got list"),
    ("base: {model: [1]}\ngrid: {models: [1e5], tokens: [1e6]}\n", "config section model must be a mapping"),
    ("grid: {models: [" + "9" * 400 + "], tokens: [1e6]}\n", "expected a number in the floating-point range"),
    ("grid: {models: [1e5], tokens: [1e6]}\nsizing: {max_layers: 1e12}\n", "sizing.max_layers must be at most"),
    ("grid: just text\n", "grid: expected a mapping, got str"),
    ("{1: a, grid: {models: [1e5], tokens: [1e6]}}\n", "unknown key 1"),
    ("grids: {models: [1e5], tokens: [1e6]}\n", "unknown key 'grids' (did you mean 'grid'?) (expected one of"),
]


@pytest.mark.parametrize("text, message", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_sweep_spec_of_the_wrong_shape(capsys, tmp_path, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.csv").write_text("run_id\n")
    before = snapshot(out)
    fails_with_one_line(capsys, sweep_cli.main, ["--config", spec, "--out", out, "--dry-run"], message)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- unreadable inputs, unusable outputs


def _paths(tmp: Path) -> dict[str, Path]:
    (tmp / "a_dir").mkdir(exist_ok=True)
    (tmp / "a_file").write_text("not a directory\n")
    if not (tmp / "dangling").is_symlink():
        (tmp / "dangling").symlink_to(tmp / "nowhere")
    (tmp / "latin1.csv").write_bytes(b"n_params,tokens,val_loss\n1e6,1e9,3.0\xe9\n")
    (tmp / "corpus").mkdir(exist_ok=True)  # a readable book beside one that cannot be read
    (tmp / "corpus" / "a.txt").write_text("a readable book\n" * 100)
    if not (tmp / "corpus" / "b.txt").is_symlink():
        (tmp / "corpus" / "b.txt").symlink_to(tmp / "nowhere")
    return {
        "corpus": tmp / "corpus",
        "dir": tmp / "a_dir",
        "file": tmp / "a_file",
        "dangling": tmp / "dangling",
        "under_file": tmp / "a_file" / "sub",
        "latin1": tmp / "latin1.csv",
    }


FILES = [
    # (entry point, arguments with placeholders, message)
    ("train", ["--out", "RUN", "--config", "dir"], "config file {dir} is a directory"),
    ("train", ["--out", "RUN", "--config", "dangling"], "is a broken symbolic link"),
    ("train", ["--out", "RUN", "--config", ""], "config file . is a directory"),
    ("train", ["--out", "file"], "--out {file} exists and is not a directory"),
    ("train", ["--out", ""], "--out must name a directory, got an empty path"),
    ("train", ["--out", "under_file"], "{file} is not a directory"),
    ("train", ["--out", "dangling"], "exists and is not a directory"),
    ("train", ["--out", "RUN", "--data.corpus", "corpus"], "corpus file {corpus}/b.txt is a broken symbolic link"),
    ("sweep", ["--config", "dir", "--out", "RUN"], "config file {dir} is a directory"),
    ("sweep", ["--out", "file"], "--out {file} exists and is not a directory"),
    ("sweep", ["--out", ""], "--out must name a directory"),
    ("fit", ["--results", "dir"], "results file {dir} is a directory"),
    ("fit", ["--results", "dangling"], "is a broken symbolic link"),
    ("fit", ["--results", "latin1"], "cannot read"),
    ("fit", ["--results", "CSV", "--out", "dir"], "--out {dir} is a directory; give a file name"),
    ("fit", ["--results", "CSV", "--out", ""], "--out must name a file, got an empty path"),
    ("fit", ["--results", "CSV", "--out", "under_file"], "{file} is not a directory"),
    ("fit", ["--results", "CSV", "--plots", "file"], "--plots {file} exists and is not a directory"),
    ("fit", ["--results", "CSV", "--plots", ""], "--plots must name a directory"),
    ("fit", ["--results", "CSV", "--bootstrap", "many"], "invalid int value: 'many'"),
    ("evaluate", ["--hf-gpt2", "dir", "--text", "dir"], "text file {dir} is a directory"),
    ("evaluate", ["--hf-gpt2", "dir", "--text", "dangling"], "is a broken symbolic link"),
    ("evaluate", ["--checkpoint", "", "--text", "CSV"], "--checkpoint must name a directory"),
    ("generate", ["--hf-gpt2", "", "--prompt", "x"], "--hf-gpt2 must name a directory"),
    ("generate", ["--prompt", "x"], "one of the arguments --checkpoint --hf-gpt2 is required"),
]
MAINS = {
    "train": train_cli.main,
    "sweep": sweep_cli.main,
    "fit": fit_cli.main,
    "evaluate": evaluate_cli.main,
    "generate": generate_cli.main,
}


@pytest.mark.parametrize("cli, args, message", FILES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in FILES])
def test_unreadable_inputs_and_unusable_outputs(capsys, tmp_path, run_out, cli, args, message):
    paths = _paths(tmp_path)
    csv = tmp_path / "runs.csv"
    sizes = range(1_000_000, 7_000_000, 1_000_000)
    csv.write_text("n_params,tokens,val_loss\n" + "".join(f"{n},1e9,{3 - n / 1e7}\n" for n in sizes))
    subst = {**paths, "RUN": run_out, "CSV": csv}
    argv = [str(subst.get(a, a)) for a in args]
    if cli == "train":
        argv += TINY
    if cli == "sweep":
        argv += ["--dry-run", "--no-calibration"]
    before = snapshot(tmp_path)
    fails_with_one_line(capsys, MAINS[cli], argv, message.format(**{k: str(v) for k, v in paths.items()}))
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- a GPT-2 directory written by hand


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The documented layout: 8-byte little-endian header size, a JSON header, raw data."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def tiny_gpt2(d: Path) -> Path:
    """A one-layer GPT-2 (width 8, context 16, GPT-2's vocabulary) with random weights."""
    d.mkdir(parents=True, exist_ok=True)
    V, C, E = 50257, 16, 8
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "n_layer": 1,
                "n_head": 2,
                "n_embd": E,
                "n_positions": C,
                "vocab_size": V,
                "n_inner": None,
            }
        )
    )
    rng = np.random.default_rng(0)
    w = {"wte.weight": rng.normal(0, 0.02, (V, E)), "wpe.weight": rng.normal(0, 0.02, (C, E))}
    for p in ("h.0.ln_1", "h.0.ln_2", "ln_f"):
        w[f"{p}.weight"], w[f"{p}.bias"] = np.ones(E), np.zeros(E)
    for p, (i, o) in {
        "h.0.attn.c_attn": (E, 3 * E),
        "h.0.attn.c_proj": (E, E),
        "h.0.mlp.c_fc": (E, 4 * E),
        "h.0.mlp.c_proj": (4 * E, E),
    }.items():
        w[f"{p}.weight"], w[f"{p}.bias"] = rng.normal(0, 0.02, (i, o)), np.zeros(o)
    write_safetensors(d / "model.safetensors", w)
    return d


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_the_hand_written_gpt2_directory_loads(gpt2_dir):
    from scaling import inference

    model = inference.load_gpt2(gpt2_dir)
    assert model.cfg.seq_len == 16 and model.cfg.n_layer == 1 and model.cfg.vocab_size == 50257


# ----------------------------------------------------------------------------- sampling and lengths

SAMPLING = [
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--top-k", "60000"], "--top-k 60000 exceeds the vocabulary (50257)"),
    (["--beam", "0"], "--beam must be >= 1"),
    (["--beam", "2", "--length-penalty", "nan"], "--length-penalty must be a finite number >= 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--seed", "4294967296"], "--seed must be in [0, 4294967295]"),
    (["--seed", "1e3"], "argument --seed: invalid int value"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "17"], "prompt plus new tokens (18) exceed the model's context of 16 tokens"),
    (["--max-new-tokens", "100000000000000000000"], "exceed the model's context of 16 tokens"),
    (["--beam", "1000000000", "--max-new-tokens", "4"], "needs at least"),
]


@pytest.mark.parametrize("args, message", SAMPLING, ids=[" ".join(a) for a, _ in SAMPLING])
def test_sampling_parameters_and_lengths_that_cannot_run(capsys, gpt2_dir, args, message):
    fails_with_one_line(capsys, generate_cli.main, ["--hf-gpt2", gpt2_dir, "--prompt", "a", *args], message)


def test_evaluate_batches_that_cannot_fit_in_memory(capsys, tmp_path, gpt2_dir):
    text = tmp_path / "t.txt"
    text.write_text("hello there, general kenobi")
    fails_with_one_line(
        capsys,
        evaluate_cli.main,
        ["--hf-gpt2", gpt2_dir, "--text", text, "--batch-size", "1000000000000"],
        "lower --batch-size",
    )


def test_rotary_lengths_are_capped_by_memory_not_only_by_the_context():
    from scaling import inference as gen

    cfg = config_lib.ModelConfig(n_layer=1, n_head=2, d_model=16, seq_len=16, vocab_size=64, position="rotary")
    assert gen.plan_buffer(cfg, 3, 200, 2) == 256  # past the context: allowed for rotary positions
    with pytest.raises(UsageError, match="needs at least .* GiB, more than 50% of this device's"):
        gen.plan_buffer(cfg, 3, 10**12, 1)
    with pytest.raises(UsageError, match="needs at least"):
        gen.generate(cfg, None, [[1, 2]], 10**9)  # refused before the parameters are touched


# ----------------------------------------------------------------------------- malformed safetensors and index files


def _header(h) -> bytes:
    raw = json.dumps(h).encode() if not isinstance(h, bytes) else h
    return struct.pack("<Q", len(raw)) + raw


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
SAFETENSORS = [
    ("short file", b"abc", "shorter than the 8-byte header size"),
    ("header past the file", struct.pack("<Q", 10**6) + b"{}", "header size 1000000 out of range"),
    ("header size 2**64-1", b"\xff" * 16, "out of range"),
    ("non-JSON header", _header(b"not json") + b"\0" * 8, "the header is not JSON"),
    ("non-UTF-8 header", _header(b'{"\xff": 1}'), "the header is not JSON"),
    ("header not an object", _header([1, 2]), "the header is not a JSON object"),
    ("tensor without offsets", _header({"wte.weight": {"dtype": "F32", "shape": [2]}}), "needs a dtype"),
    ("negative offset", _header({"wte.weight": {**F32_2, "data_offsets": [-8, 0]}}) + b"\0" * 8, "needs a dtype"),
    ("negative shape", _header({"wte.weight": {**F32_2, "shape": [-1, -2]}}) + b"\0" * 8, "needs a dtype"),
    ("offsets past the data", _header({"wte.weight": F32_2}) + b"\0" * 4, "truncated or corrupt (tensor wte.weight"),
    (
        "offsets reversed",
        _header({"wte.weight": {**F32_2, "data_offsets": [8, 0]}}) + b"\0" * 8,
        "truncated or corrupt",
    ),
    ("size mismatch", _header({"wte.weight": {**F32_2, "shape": [3]}}) + b"\0" * 8, "truncated or corrupt"),
    (
        "unknown dtype",
        _header({"wte.weight": {**F32_2, "dtype": "F8_E9M9"}}) + b"\0" * 8,
        "unsupported dtype 'F8_E9M9'",
    ),
]


@pytest.mark.parametrize("name, content, message", SAFETENSORS, ids=[s[0] for s in SAFETENSORS])
def test_malformed_safetensors_headers(capsys, tmp_path, gpt2_dir, name, content, message):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_bytes((gpt2_dir / "config.json").read_bytes())
    (d / "model.safetensors").write_bytes(content)
    fails_with_one_line(capsys, generate_cli.main, ["--hf-gpt2", d, "--prompt", "a"], message)


INDEXES = [
    ("parent directory", {"weight_map": {"wte.weight": "../outside.safetensors"}}, "names a weight file outside"),
    ("absolute path", {"weight_map": {"wte.weight": "ABS"}}, "names a weight file outside"),
    ("nested parent", {"weight_map": {"wte.weight": "sub/../../outside.safetensors"}}, "names a weight file outside"),
    ("not a string", {"weight_map": {"wte.weight": 3}}, "weight_map value '3'"),
    ("weight_map a list", {"weight_map": ["model.safetensors"]}, "no weight_map object"),
    ("index a list", [1], "no weight_map object"),
    ("index not JSON", "{", "is not a valid safetensors index"),
]


@pytest.mark.parametrize("name, index, message", INDEXES, ids=[i[0] for i in INDEXES])
def test_index_files_that_point_outside_the_model_directory(capsys, tmp_path, gpt2_dir, name, index, message):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_bytes((gpt2_dir / "config.json").read_bytes())
    outside = tmp_path / "outside.safetensors"  # a valid file: refused for where it is, not for what it holds
    outside.write_bytes((gpt2_dir / "model.safetensors").read_bytes())
    if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
        index = {"weight_map": {k: str(outside) if v == "ABS" else v for k, v in index["weight_map"].items()}}
    (d / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    fails_with_one_line(capsys, generate_cli.main, ["--hf-gpt2", d, "--prompt", "a"], message)


def test_an_index_inside_the_directory_still_loads(tmp_path, gpt2_dir):
    from scaling import inference

    d = tmp_path / "gpt2"
    (d / "shards").mkdir(parents=True)
    (d / "config.json").write_bytes((gpt2_dir / "config.json").read_bytes())
    (d / "shards" / "a.safetensors").write_bytes((gpt2_dir / "model.safetensors").read_bytes())
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "shards/a.safetensors"}}))
    assert inference.load_gpt2(d).cfg.d_model == 8


CONFIG_JSONS = [
    ("a list", "[1]", "is not a JSON object"),
    ("n_layer text", {"n_layer": "two"}, "config.json: n_layer must be int, got 'two'"),
    ("n_layer fractional", {"n_layer": 1.5}, "config.json: n_layer must be int"),
    ("n_layer zero", {"n_layer": 0}, "config.json: model.n_layer must be >= 1"),
    ("epsilon NaN", {"layer_norm_epsilon": float("nan")}, "config.json: model.norm_eps must be a finite number"),
    ("no n_embd", {"n_embd": None}, "config.json lacks n_embd"),
]


@pytest.mark.parametrize("name, edit, message", CONFIG_JSONS, ids=[c[0] for c in CONFIG_JSONS])
def test_config_json_of_the_wrong_types(capsys, tmp_path, gpt2_dir, name, edit, message):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "model.safetensors").symlink_to(gpt2_dir / "model.safetensors")
    if isinstance(edit, str):
        (d / "config.json").write_text(edit)
    else:
        c = {**json.loads((gpt2_dir / "config.json").read_text()), **edit}
        (d / "config.json").write_text(json.dumps({k: v for k, v in c.items() if v is not None or k == "n_inner"}))
    fails_with_one_line(capsys, generate_cli.main, ["--hf-gpt2", d, "--prompt", "a"], message)


# ----------------------------------------------------------------------------- in real processes


@pytest.mark.e2e
def test_each_class_in_a_real_process(tmp_path, run_out):
    """The exit code and the lone stderr line of a real process, one case per class that does
    not need a model (those share the in-process entry points above)."""
    paths = _paths(tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [1, 2]\n")
    before = snapshot(run_out)
    cases = [
        ("experiments.train", ["--out", run_out, *TINY, "--train.tokens", "inf"], "--train.tokens expects an integer"),
        ("experiments.train", ["--out", run_out, *TINY, "--config", bad_yaml], "config section model must be"),
        ("experiments.train", ["--out", paths["file"], *TINY], "exists and is not a directory"),
        (
            "experiments.generate",
            ["--hf-gpt2", paths["dir"], "--prompt", "a", "--temperature", "nan"],
            "--temperature must be a finite number",
        ),
    ]
    for module, args, message in cases:
        r = run_cli(module, *args, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert snapshot(run_out) == before


def test_the_config_layer_does_not_import_jax():
    code = (
        "import sys, scaling.config, scaling.sweep.spec, analysis.fit; "
        "sys.exit(any(m in sys.modules for m in ('jax', 'flax', 'optax')))"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120
        ).returncode
        == 0
    )


# ----------------------------------------------------------------------------- fits that give no valid law


def _csv(path: Path, loss) -> Path:
    rows = ["n_params,tokens,budget,val_loss,status"]
    rng = np.random.default_rng(0)
    for C in (1e17, 1e18, 1e19):
        for N in np.logspace(6, 8, 5):
            rows.append(f"{N:.6g},{C / (6 * N):.6g},{C:.6g},{loss(N, rng):.6g},completed")
    path.write_text("\n".join(rows) + "\n")
    return path


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "kind, loss, reason",
    [
        ("loss rising with N", lambda N, rng: 2.0 + 0.1 * math.log(N) + 0.01 * rng.standard_normal(), "alpha = "),
        ("constant loss", lambda N, rng: 3.0, "the data show no dependence on N"),
    ],
)
@pytest.mark.e2e
def test_a_fit_to_an_invalid_law_is_written_with_a_degenerate_flag(capsys, tmp_path, kind, loss, reason):
    csv = _csv(tmp_path / "runs.csv", loss)
    out, plots = tmp_path / "fit.json", tmp_path / "plots"
    rc = fit_cli.main(
        [
            "--results",
            str(csv),
            "--approach",
            "all",
            "--bootstrap",
            "3",
            "--predict-c",
            "1e20",
            "--holdout-top-c",
            "2",
            "--out",
            str(out),
            "--plots",
            str(plots),
            "--no-progress",
        ]
    )
    report = capsys.readouterr().out
    assert rc == 0
    res = _strict_json(out.read_text())
    assert res["degenerate"] is True and any(reason in r for r in res["degenerate_reasons"]), res["degenerate_reasons"]
    assert "DEGENERATE fit (approach 3)" in report and reason in report
    assert res["approach2"].get("not_run") or "degenerate" in res["approach2"]
    if res["alpha"] <= 0:  # no compute-optimal frontier: null, never NaN
        assert res["a"] is None and res["G"] is None and res["predict"][0]["N_opt"] is None
    assert (plots / "pred_vs_obs.png").is_file()


def test_degenerate_reasons_by_hand():
    N, D = np.array([1e6, 1e7, 1e8]), np.array([1e9, 1e9, 1e9])
    L = np.array([3.0, 3.0, 3.0])
    assert laws.degenerate_reasons((1.0, 10.0, 10.0, 0.3, 0.3), N, D, L) == ()
    r = laws.degenerate_reasons((1e-9, 10.0, 10.0, -0.1, 0.3), N, D, L)
    assert any(x.startswith("alpha = -0.1 <= 0") for x in r) and any(x.startswith("E = 1e-09 is at zero") for x in r)
    assert laws.degenerate_reasons((1.0, float("inf"), 1.0, 0.3, 0.3), N, D, L) == ("a fitted parameter is not finite",)
    G, a, b = laws.frontier(1.0, 10.0, 10.0, -0.1, 0.3)
    assert math.isnan(G) and math.isnan(a) and math.isnan(b)  # not a complex number, not an exception
    assert laws.exponent_reasons(1.2, "approach 2") and not laws.exponent_reasons(0.5, "approach 2")


# ----------------------------------------------------------------------------- property-based: the config parser

FIELDS = [
    (f.name, g.name) for f in dataclasses.fields(config_lib.Config) for g in dataclasses.fields(f.default_factory)
]
NASTY = [
    "inf",
    "-inf",
    "nan",
    "NaN",
    "1e30",
    "-1",
    "0",
    "-0",
    "1e-400",
    "2.5",
    "0x10",
    " 7 ",
    "1_000",
    "",
    "12345678901234567890",
    "9" * 30,
    "1e999999999",
    "true",
    "no",
    "null",
    "~",
    "[1]",
    "{a: 1}",
    "rotary",
    "\x00",
    "é",
    "4294967296",
    "9223372036854775808",
    "-9223372036854775809",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    # no subnormals: a library built with -ffast-math may have switched them off in this process
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.sampled_from(NASTY),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
SECTION_NAMES = st.one_of(st.sampled_from(sorted({s for s, _ in FIELDS})), st.text(max_size=6), st.integers())
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _valid(cfg: config_lib.Config) -> None:
    """A Config that was accepted holds only finite numbers in range and survives YAML."""
    for sec, name in FIELDS:
        v = getattr(getattr(cfg, sec), name)
        if isinstance(v, float):
            assert math.isfinite(v)
        if isinstance(v, int) and not isinstance(v, bool):
            assert INT64_MIN <= v <= INT64_MAX
    assert 0 <= cfg.train.seed <= config_lib.SEED_MAX
    assert config_parse.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(SCALARS, VALUES)), max_size=6))
def test_random_overrides_give_a_valid_config_or_a_usage_error(pairs):
    overrides: dict = {}
    for (sec, name), value in pairs:
        overrides.setdefault(sec, {})[name] = value
    try:
        cfg = config_parse.resolve(None, overrides)
    except UsageError as e:
        assert str(e).strip()
        return
    _valid(cfg)


@PROPERTY
@given(
    st.dictionaries(
        SECTION_NAMES,
        st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from([n for _, n in FIELDS]), st.text(max_size=6)), VALUES, max_size=4
            ),
            VALUES,
        ),
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(NASTY), max_size=2),
)
def test_random_yaml_documents_give_a_valid_config_or_a_usage_error(tmp_path_factory, doc, flat_overrides):
    path = tmp_path_factory.mktemp("yaml", numbered=True) / "c.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    overrides: dict = {}
    for (sec, name), value in flat_overrides.items():
        overrides.setdefault(sec, {})[name] = value
    try:
        cfg = config_parse.resolve(str(path), overrides)
    except UsageError as e:
        assert str(e).strip()
        return
    _valid(cfg)


@PROPERTY
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_yaml_text_and_bytes_give_a_valid_config_or_a_usage_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("raw", numbered=True) / "c.yaml"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    try:
        cfg = config_parse.resolve(str(path), {})
    except UsageError as e:
        assert str(e).strip()
        return
    _valid(cfg)


@PROPERTY
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(SPEC_KEYS)), st.text(max_size=5)), VALUES, max_size=5))
def test_random_sweep_specs_give_a_spec_or_a_usage_error(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("spec", numbered=True) / "s.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        load_spec(path)
    except UsageError as e:
        assert str(e).strip()
