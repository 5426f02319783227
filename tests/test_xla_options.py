"""The dot library of the compiled programs on a CPU (scaling/train/xla_options.py): the train
step compiled with it, the choice by SCALING_CPU_DOTS, and a bad choice refused."""

import dataclasses

import jax
import pytest

from scaling.config import Config, ModelConfig, TrainConfig
from scaling.errors import UsageError
from scaling.sharding import make_mesh
from scaling.train import ShapePrograms, xla_options

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are a CPU backend's")


def _programs() -> ShapePrograms:
    model = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=8)
    cfg = dataclasses.replace(Config(), model=model, train=TrainConfig(batch_size=4))
    return ShapePrograms(cfg, make_mesh({"data": 1, "fsdp": 1, "model": 1}), 10)


@cpu_only
def test_the_dot_library_is_xlas_by_default_and_eigen_keeps_the_step_out_of_ynnpack(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    assert _programs().compiler_options is None
    monkeypatch.setenv(xla_options.ENV, "eigen")
    programs = _programs()
    assert programs.compiler_options == xla_options.CPU_DOTS["eigen"]
    text = programs.compile_step().as_text()
    assert "__ynn_fusion" not in text and " dot(" in text


def test_an_unknown_dot_library_is_refused_before_compute(monkeypatch):
    monkeypatch.setenv(xla_options.ENV, "mkl")
    with pytest.raises(UsageError, match="SCALING_CPU_DOTS"):
        xla_options.cpu_dots()
