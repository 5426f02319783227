"""Hugging Face GPT-2 parity: a small random GPT2LMHeadModel saved with save_pretrained,
loaded through scaling.inference: logits within 1e-4 of transformers', greedy tokens identical to
transformers' generate; loss equal to transformers' on a text; clear errors on bad files."""

from __future__ import annotations

import json
import math
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("CI") == "true":  # in CI the reference must run
    import torch
    import transformers
else:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

from scaling import inference  # noqa: E402
from scaling.errors import UsageError  # noqa: E402
from scaling.model import GPT  # noqa: E402

PROMPTS = ["Hello, my dog is cute and", "The quick brown fox", "In 1905, Einstein"]


def _save(model, path):
    model.save_pretrained(str(path))
    return path


def _hf_model(**kw):
    torch.manual_seed(0)
    base = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, initializer_range=0.1)
    cfg = transformers.GPT2Config(**{**base, **kw})
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    model = _hf_model()
    return model, _save(model, tmp_path_factory.mktemp("gpt2-tied"))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_logits_match_transformers_within_1e4(tied):
    model, path = tied
    loaded = inference.load_gpt2(path)
    assert loaded.cfg.vocab_size == 50257 and loaded.cfg.padded_vocab == 50257 and loaded.cfg.seq_len == 64
    for text in PROMPTS + ["x" * 70]:
        ids = loaded.encode(text)[:64]
        ours = np.asarray(GPT(loaded.cfg).apply({"params": loaded.params}, jnp.asarray([ids])))[0]
        ref = _hf_logits(model, ids)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_30_greedy_tokens_identical_to_transformers_generate(tied):
    model, path = tied
    loaded = inference.load_gpt2(path)
    prompts = [loaded.encode(t) for t in PROMPTS]
    ours = inference.generate(loaded.cfg, loaded.params, prompts, 30, eot=loaded.eot)
    ours_uncached = inference.generate(loaded.cfg, loaded.params, prompts, 30, eot=loaded.eot, use_cache=False)
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=30,
                min_new_tokens=30,
                do_sample=False,
                pad_token_id=loaded.eot,
            )
        ref = out[0, len(ids) :].tolist()
        assert len(ref) == 30
        assert ours.new_tokens(i) == ref, i
        assert ours_uncached.new_tokens(i) == ref, i
    assert len({tuple(ours.new_tokens(i)) for i in range(3)}) > 1


def test_untied_head_and_original_tensor_names(tmp_path):
    """An untied lm_head; and the OpenAI-converted naming (no 'transformer.' prefix, with
    the attn.bias mask buffers), read from a file written by the safetensors package."""
    from safetensors.numpy import save_file

    model = _hf_model(tie_word_embeddings=False, n_inner=96, layer_norm_epsilon=1e-6)
    path = _save(model, tmp_path / "untied")
    loaded = inference.load_gpt2(path)
    assert not loaded.cfg.tie_embeddings and loaded.cfg.ff_dim == 96 and loaded.cfg.norm_eps == 1e-6
    ids = loaded.encode(PROMPTS[0])
    ours = np.asarray(GPT(loaded.cfg).apply({"params": loaded.params}, jnp.asarray([ids])))[0]
    np.testing.assert_allclose(ours, _hf_logits(model, ids), atol=1e-4, rtol=0)

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(path / "config.json", renamed / "config.json")
    sd = {k.removeprefix("transformer."): v.numpy().copy() for k, v in model.state_dict().items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(renamed / "model.safetensors"))
    again = inference.load_gpt2(renamed)
    for a, b in zip(*(sorted(_flat(x.params).items()) for x in (loaded, again))):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def test_evaluate_cli_loss_equals_transformers_loss(tied, tmp_path, capsys):
    from experiments import evaluate as cli

    model, path = tied
    text = "It was the best of times, it was the worst of times; caf\u00e9 \u2014 na\u00efve.\n"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    out = cli.main(["--hf-gpt2", str(path), "--text", str(f)])
    enc = inference.load_gpt2(path).encoding
    ids = [enc.eot_token] + enc.encode_ordinary(text)
    assert len(ids) <= 64  # one window: transformers' loss over the same targets is the reference
    with torch.no_grad():
        ref = float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert out["tokens"] == len(ids) - 1 and out["bytes"] == len(text.encode("utf-8"))
    assert out["loss"] == pytest.approx(ref, abs=1e-4)
    assert out["perplexity"] == pytest.approx(math.exp(ref), rel=1e-4)
    assert out["bits_per_byte"] == pytest.approx(ref * out["tokens"] / math.log(2) / out["bytes"], rel=1e-4)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == out


def test_generate_cli_with_hf_gpt2(tied, capsys):
    from experiments import generate as cli

    model, path = tied
    recs = cli.main(["--hf-gpt2", str(path), "--prompt", PROMPTS[1], "--max-new-tokens", "12", "--json"])
    ids = inference.load_gpt2(path).encode(PROMPTS[1])
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=50256,
        )[0, len(ids) :].tolist()
    assert recs[0]["tokens"] == ref
    assert json.loads(capsys.readouterr().out.splitlines()[0])["tokens"] == ref


def _broken(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _set_config(**kw):
    def edit(d):
        c = json.loads((d / "config.json").read_text())
        c.update(kw)
        (d / "config.json").write_text(json.dumps(c))

    return edit


def _truncate(d):
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (_truncate, "truncated or corrupt"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 16), "not a readable safetensors file"),
        (_set_config(n_embd=48), "has shape"),
        (_set_config(n_layer=3), "lacks tensor 'h.2.ln_1.weight'"),
        (_set_config(activation_function="relu"), "activation_function 'relu'"),
        (_set_config(model_type="llama"), "expected 'gpt2'"),
        (_set_config(vocab_size=1000), "smaller than the gpt2 tokenizer"),
    ],
)
def test_bad_checkpoints_are_clear_errors_and_exit_2(tied, tmp_path, capsys, edit, message):
    from experiments import generate as cli

    path = _broken(tied[1], tmp_path / "bad", edit)
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        inference.load_gpt2(path)
    with pytest.raises(SystemExit) as e:
        cli.main(["--hf-gpt2", str(path), "--prompt", "hi"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_missing_directory_exit_2(tmp_path, capsys):
    from experiments import evaluate as cli

    f = tmp_path / "t.txt"
    f.write_text("hello")
    with pytest.raises(SystemExit) as e:
        cli.main(["--hf-gpt2", str(tmp_path / "nope"), "--text", str(f)])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
