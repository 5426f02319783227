"""GPT-2 interop both ways: the project's models exported as GPT-2 checkpoints that
transformers' GPT2LMHeadModel loads with the same logits (within 1e-4), exports refused with one
line naming the setting GPT-2 lacks; and transformers' bfloat16 and float16 checkpoints
(safetensors and pytorch_model.bin) read by the project with transformers' logits."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

if os.environ.get("CI") == "true":  # in CI the reference must run
    import torch
    import transformers
else:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

from experiments import export as export_cli  # noqa: E402
from scaling import inference  # noqa: E402
from scaling.config import Config, DataConfig, ModelConfig  # noqa: E402
from scaling.errors import UsageError  # noqa: E402
from scaling.inference import export, hf  # noqa: E402
from scaling.model import GPT  # noqa: E402
from tests.helpers import tiktoken_offline, tiny_run_dir  # noqa: E402


def _params(m: ModelConfig, seed: int = 0):
    """Random parameters of the model's shapes, every leaf drawn (biases and LayerNorms not at 0
    and 1), so that a tensor put in the wrong place changes the logits; drawn with numpy, as an
    initialisation would compile a program per shape."""
    shapes = jax.eval_shape(lambda: GPT(m).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.2, s.shape).astype(np.float32), nn.unbox(shapes))


def _ours(m: ModelConfig, params, ids):
    return np.asarray(jax.jit(GPT(m).apply)({"params": params}, jnp.asarray(ids)))[..., : m.vocab_size]


def _theirs(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.float().numpy()


def _batch(vocab: int, t: int, b: int = 3):
    return np.random.default_rng(0).integers(0, vocab, (b, t))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "tie, scan",
    [pytest.param(True, False, id="tied-looped"), pytest.param(False, True, id="untied-scanned", marks=SLOW)],
)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, tie, scan):
    shape = dict(n_layer=2, n_head=2, d_model=32, d_ff=48, seq_len=16, vocab_size=257, norm_eps=1e-6)
    m = ModelConfig(**shape, tie_embeddings=tie, scan_layers=scan)
    cfg = Config(model=m, data=DataConfig(tokenizer="byte"))
    params = _params(m)
    written = export.write(tmp_path / "gpt2", cfg, params)
    assert sorted(p.name for p in (tmp_path / "gpt2").iterdir()) == sorted(export.FILES)
    assert written == json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert (written["vocab_size"], written["n_inner"], written["eos_token_id"]) == (257, 48, 256)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    assert model.config.tie_word_embeddings is tie and model.config.layer_norm_epsilon == 1e-6
    ids = _batch(257, 16)
    ours, ref = _ours(m, params, ids), _theirs(model, ids)
    assert ref.shape == (3, 16, 257)  # the embedding's padding rows (to 320) are not exported
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # and back: the project reads its export (byte vocabulary) with the same logits
    back = inference.load_gpt2(tmp_path / "gpt2")
    assert back.encoding.name == "byte" and back.cfg.vocab_size == 257 and back.cfg.tie_embeddings is tie
    np.testing.assert_allclose(_ours(back.cfg, back.params, ids), ours, atol=1e-5, rtol=0)


@SLOW
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_export_reads_back_in_both(tmp_path, dtype):
    m = ModelConfig(n_layer=1, n_head=2, d_model=32, seq_len=8, vocab_size=257)
    cfg = Config(model=m, data=DataConfig(tokenizer="byte"))
    params = _params(m)
    export.write(tmp_path / "gpt2", cfg, params, dtype=dtype)
    raw = hf.read_safetensors(tmp_path / "gpt2" / "model.safetensors")
    st_dtype, np_dtype = export.DTYPES[dtype]
    assert raw["transformer.wpe.weight"].dtype == np.dtype(np_dtype)
    np.testing.assert_array_equal(raw["transformer.wpe.weight"], np.asarray(params["wpe"]).astype(np_dtype))
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    assert model.dtype == getattr(torch, dtype)
    back = inference.load_gpt2(tmp_path / "gpt2")
    ids = _batch(257, 8)
    np.testing.assert_allclose(_ours(back.cfg, back.params, ids), _theirs(model.float(), ids), atol=1e-4, rtol=0)


def _hf_gpt2(**kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, initializer_range=0.1, **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize(
    "dtype, fmt",
    [
        ("bfloat16", "safetensors"),
        pytest.param("float16", "safetensors", marks=SLOW),
        pytest.param("bfloat16", "bin", marks=SLOW),
        ("float16", "bin"),
    ],
)
def test_half_precision_transformers_checkpoints_import(tmp_path, dtype, fmt):
    """A checkpoint transformers saved in bfloat16 or float16 (safetensors, or a PyTorch
    state_dict file): the project's logits equal transformers' on the same (upcast) weights."""
    model = _hf_gpt2().to(getattr(torch, dtype))
    d = tmp_path / "gpt2"
    model.save_pretrained(d)
    if fmt == "bin":
        (d / "model.safetensors").unlink()
        torch.save(model.state_dict(), d / "pytorch_model.bin")
    loaded = inference.load_gpt2(d)
    wte = model.transformer.wte.weight.float().detach().numpy()
    np.testing.assert_array_equal(np.asarray(loaded.params["wte"]["embedding"]), wte)
    ids = [loaded.encode("It was the best of times, it was the worst of times")[:32]]
    np.testing.assert_allclose(_ours(loaded.cfg, loaded.params, ids), _theirs(model.float(), ids), atol=1e-4, rtol=0)


def test_unreadable_pytorch_checkpoint_is_one_line(tmp_path, capsys):
    d = tmp_path / "gpt2"
    _hf_gpt2().save_pretrained(d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="is not a readable PyTorch checkpoint"):
        inference.load_gpt2(d)


# ------------------------------------------------------------------------ the command line


def test_cli_exports_a_trained_run(tmp_path, capsys):
    run = tiny_run_dir()
    out = tmp_path / "exported"
    summary = export_cli.main(["--run", str(run), "--out", str(out)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == summary and summary["tokenizer"] == "byte" and summary["vocab_size"] == 257
    assert summary["files"]["model.safetensors"] == (out / "model.safetensors").stat().st_size
    trained = inference.load_checkpoint(run)
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = [trained.encode("To be, or not to be: that is the question.")[: trained.cfg.seq_len]]
    np.testing.assert_allclose(_ours(trained.cfg, trained.params, ids), _theirs(model, ids), atol=1e-4, rtol=0)
    assert set(summary["files"]) == set(export.FILES) and all((out / f).is_file() for f in export.FILES)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("To be, or not to be: that is the question.")["input_ids"] == trained.encode(
        "To be, or not to be: that is the question."
    )
    assert tokenizer.model_max_length == trained.cfg.seq_len
    # exporting again into a previous export replaces it; a directory with other files is refused
    export_cli.main(["--run", str(run), "--out", str(out), "--dtype", "bfloat16"])
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--run", str(run), "--out", str(run)])
    assert e.value.code == 2 and "holds files other than an export's" in capsys.readouterr().err


def _run_dir(tmp_path, **sections):
    """A run directory holding only a config.yaml (refusals come before any checkpoint is read)."""
    d = dict(Config().to_dict())
    for sec, fields in sections.items():
        d[sec] = {**d[sec], **fields}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(d))
    return run


@pytest.mark.parametrize(
    "sections, field",
    [
        ({"model": {"position": "rotary"}}, "model.position=rotary"),
        ({"model": {"norm": "rmsnorm"}}, "model.norm=rmsnorm"),
        ({"model": {"bias": False}}, "model.bias=false"),
        ({"model": {"mlp": "swiglu"}}, "model.mlp=swiglu"),
        ({"data": {"tokenizer": "bpe:300"}}, "data.tokenizer=bpe:300"),
        ({"model": {"vocab_size": 200}}, "model.vocab_size=200"),
    ],
)
def test_cli_refuses_what_gpt2_cannot_express(tmp_path, capsys, sections, field):
    run = _run_dir(tmp_path, **sections)
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--run", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: cannot export as GPT-2: ") and field in err[0]
    assert not (tmp_path / "out").exists()


def test_a_gpt2_export_without_its_tokenizers_ranks_is_refused_before_reading_weights(tmp_path, capsys, monkeypatch):
    tiktoken_offline(monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    run = _run_dir(tmp_path, data={"tokenizer": "gpt2"}, model={"vocab_size": 50304})  # no checkpoint
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--run", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "gpt2 tokenizer unavailable" in err[0]
    assert not (tmp_path / "out").exists()


def test_every_field_gpt2_lacks_is_named():
    cfg = Config(model=ModelConfig(position="rotary", mlp="swiglu"), data=DataConfig(tokenizer="bpe:300"))
    assert [why.split(" ")[0] for why in export.unsupported(cfg)] == [
        "model.position=rotary",
        "model.mlp=swiglu",
        "data.tokenizer=bpe:300",
    ]
    assert export.unsupported(Config(model=ModelConfig(vocab_size=257))) == []
    gpt2 = export.gpt2_config(Config(model=ModelConfig(vocab_size=50304), data=DataConfig(tokenizer="gpt2")))
    assert (gpt2["vocab_size"], gpt2["eos_token_id"], gpt2["scaling_tokenizer"]) == (50304, 50256, "gpt2")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "MISSING", "--out", "OUT"], "run directory not found"),
        (["--run", "EMPTY", "--out", "OUT"], "not a training run directory"),
        (["--run", "EMPTY", "--out", "OUT", "--dtype", "int8"], "--dtype must be one of float32, bfloat16"),
        (["--run", "EMPTY", "--out", "FILE"], "exists and is not a directory"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    names = {"MISSING": "nope", "EMPTY": "empty", "OUT": "out", "FILE": "file"}
    with pytest.raises(SystemExit) as e:
        export_cli.main([str(tmp_path / names[a]) if a in names else a for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
