"""FLOP counts: the Chinchilla formula by hand, and XLA's count of the compiled train step."""

from __future__ import annotations

import dataclasses

import pytest

from scaling import flops
from scaling.config import Config, ModelConfig, TrainConfig
from scaling.sharding import make_mesh
from scaling.train import Trainer


def test_chinchilla_formula_by_hand():
    # A 2-layer, d=64, 4-head, f=256, n_ctx=32, V=320 model, Appendix F term by term.
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=4, seq_len=32, vocab_size=300, vocab_multiple=64)
    s, d, v, L = 32, 64, 320, 2
    fwd = (
        2 * s * v * d  # embeddings
        + L
        * (
            2 * 3 * s * d * d  # qkv
            + 2 * s * s * d  # logits
            + 3 * 4 * s * s  # softmax
            + 2 * s * s * d  # attention over values
            + 2 * s * d * d  # output projection
            + 2 * s * (d * 256 + 256 * d)
        )  # dense block
        + 2 * s * d * v
    )  # final logits
    assert flops.flops_per_token_chinchilla(cfg) == pytest.approx(3 * fwd / s)
    n = flops.param_counts(cfg)
    assert flops.flops_per_token_6n(cfg) == 6 * n["n_params"]
    assert flops.flops_per_token_kaplan(cfg) == 6 * n["n_params_nonembed"] + 6 * L * s * d


@pytest.mark.parametrize(
    "shape,batch",
    [
        (dict(n_layer=2, d_model=64, n_head=4, seq_len=64), 4),
        (dict(n_layer=3, d_model=96, n_head=3, seq_len=128), 4),
        (dict(n_layer=2, d_model=128, n_head=4, seq_len=32, mlp="swiglu"), 4),
        (dict(n_layer=2, d_model=64, n_head=2, seq_len=256), 16),  # 4 microbatches
        (dict(n_layer=2, d_model=64, n_head=4, seq_len=128, attention="blocked"), 8),
        (dict(n_layer=2, d_model=64, n_head=8, seq_len=128), 4),
    ],
)  # head size 8
def test_xla_flops_within_15_percent_of_chinchilla(shape, batch):
    """Whatever the attention (C++ kernel, blocked, plain) and the microbatches."""
    model = ModelConfig(vocab_size=257, **shape)
    cfg = dataclasses.replace(Config(), model=model, train=TrainConfig(batch_size=batch, tokens=10**6))
    trainer = Trainer(cfg, make_mesh({"data": 1, "fsdp": 1, "model": 1}), total_steps=100)
    xla_per_token = trainer.xla_flops_per_step() / (batch * model.seq_len)  # what summaries report
    chin = flops.flops_per_token_chinchilla(model)
    assert abs(xla_per_token / chin - 1) < 0.15, (xla_per_token, chin)
