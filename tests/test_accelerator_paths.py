"""The accelerator code paths, checked on a CPU: cuDNN's fused attention (``model.attention
cudnn``, chosen by auto on an NVIDIA GPU for bfloat16 where it compiles) and rematerialised
blocks (``model.remat``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from scaling.config import Config, ModelConfig
from scaling.errors import UsageError
from scaling.evaluation import cross_entropy
from scaling.model import GPT, check_attention, training_attention
from scaling.model import attention as attn_lib
from scaling.model import gpt as gpt_lib


def _model(**kw) -> ModelConfig:
    return ModelConfig(**{"n_layer": 2, "d_model": 32, "n_head": 2, "seq_len": 16, "vocab_size": 64, **kw})


def test_cudnn_attention_is_configured_up_front_and_refused_off_a_gpu():
    assert _model(attention="cudnn", dtype="bfloat16").attention == "cudnn"
    with pytest.raises(UsageError, match="model.attention=cudnn needs model.dtype bfloat16"):
        _model(attention="cudnn")
    with pytest.raises(UsageError, match="a head size that is a multiple of 8 up to 128, got bfloat16 and 12"):
        _model(attention="cudnn", dtype="bfloat16", d_model=24, n_head=2)
    assert jax.default_backend() == "cpu"
    with pytest.raises(UsageError, match="model.attention=cudnn is unavailable: it needs an NVIDIA GPU"):
        check_attention(_model(attention="cudnn", dtype="bfloat16"))


def test_auto_takes_cudnn_on_a_gpu_for_bfloat16_where_it_compiles(monkeypatch, capsys):
    monkeypatch.setattr(gpt_lib.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attn_lib, "cudnn_unavailable", lambda: None)
    assert training_attention(_model(dtype="bfloat16")) == "cudnn"
    assert training_attention(_model()) == "dot_product"  # float32: XLA's
    monkeypatch.setattr(attn_lib, "cudnn_unavailable", lambda: "cuDNN 8.9 is too old")
    assert training_attention(_model(dtype="bfloat16")) == "dot_product"
    assert (
        "cuDNN's fused attention is unavailable (cuDNN 8.9 is too old); using XLA's attention"
        in capsys.readouterr().err
    )


def test_cudnn_attention_asks_for_the_causal_cudnn_kernel(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def recording(q, k, v, **kw):
        calls.append(kw)
        return real(q, k, v, **{k_: v_ for k_, v_ in kw.items() if k_ != "implementation"})

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 8, 2, 16))
    out = attn_lib.cudnn_attention(q, k, v)
    assert calls == [{"is_causal": True, "implementation": "cudnn"}]
    np.testing.assert_allclose(out, attn_lib.dot_product_attention(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_blocks_give_the_same_loss_and_gradients(scan_layers):
    cfg = _model(scan_layers=scan_layers, attention="dot_product")
    batch = jax.random.randint(jax.random.key(1), (4, cfg.seq_len + 1), 0, cfg.vocab_size)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]
    remat = dataclasses.replace(cfg, remat=True)
    assert jax.tree.structure(GPT(remat).init(jax.random.key(0), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]) == (
        jax.tree.structure(params)
    )

    def loss_and_grads(c):
        return jax.jit(jax.value_and_grad(lambda p: cross_entropy(GPT(c), p, batch, train=True)))(params)

    (l0, g0), (l1, g1) = loss_and_grads(cfg), loss_and_grads(remat)
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert _saved_activations(remat, params, batch) < _saved_activations(cfg, params, batch) / 2


def _saved_activations(cfg: ModelConfig, params, batch) -> int:
    """How many (batch, time, ...) arrays the backward pass keeps from the forward."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda p: cross_entropy(GPT(cfg), p, batch, train=True), params)
    shape = re.compile(rf"\[(\d+,)?{batch.shape[0]},{cfg.seq_len}[,\]]")  # scanned: a leading layers axis
    return sum(bool(shape.search(line)) for line in out.getvalue().splitlines())


def test_remat_and_attention_do_not_change_a_runs_identity():
    base = Config()
    for model in (dataclasses.replace(base.model, remat=True), dataclasses.replace(base.model, attention="blocked")):
        assert dataclasses.replace(base, model=model).identity_hash() == base.identity_hash()
