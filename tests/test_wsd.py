"""Warmup-stable-decay: the schedule's values, cooldown branches of a run (bitwise equal to
unbroken runs, also after SIGKILL), bad --branch-from input, and wsd sweeps whose shorter runs
branch from the longest of their family."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import train as train_cli
from scaling.config import OptimConfig
from scaling.errors import UsageError
from scaling.train import load_run
from scaling.train.optimizer import decay_start, lr_schedule
from tests.helpers import REPO, TINY, run_cli

# ------------------------------------------------------------------ the schedule


def _lrs(cfg: OptimConfig, total: int, steps) -> np.ndarray:
    return np.asarray(jax.device_get(lr_schedule(cfg, total)(np.asarray(steps, np.int32))))


@settings(max_examples=40, deadline=None)
@given(t1=st.integers(1, 3000), extra=st.integers(1, 3000), warmup=st.integers(0, 50),
       fraction=st.floats(0.01, 1.0), shape=st.sampled_from(["linear", "1-sqrt"]))
def test_wsd_runs_agree_bitwise_before_the_shorter_runs_decay(t1, extra, warmup, fraction, shape):
    cfg = OptimConfig(lr=3e-3, warmup_steps=warmup, schedule="wsd", decay_fraction=fraction, decay_shape=shape)
    t2 = t1 + extra
    start = decay_start(cfg, t1)
    assert 0 <= start < t1 and start == t1 - max(1, min(t1, round(np.float32(fraction) * np.float32(t1))))
    if warmup > t1 - 1:  # a run shorter than the warmup caps it: no shared prefix to speak of
        return
    steps = np.arange(start)
    a, b = _lrs(cfg, t1, steps), _lrs(cfg, t2, steps)
    assert a.tobytes() == b.tobytes()  # bit for bit, not merely close
    if start:  # the traced decay start is the host's: the rate leaves the peak exactly there
        assert _lrs(cfg, t1, [start])[0] < _lrs(cfg, t1, [start - 1])[0] or start <= warmup


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_warms_up_holds_the_peak_then_decays_to_the_floor(shape):
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=4, schedule="wsd", decay_fraction=0.25,
                      decay_shape=shape)
    total = 40
    lr = _lrs(cfg, total, np.arange(total))
    np.testing.assert_allclose(lr[:4], 2.0 * np.arange(1, 5) / 5, rtol=1e-6)
    assert decay_start(cfg, total) == 30
    assert np.all(lr[4:30] == np.float32(2.0))
    k = np.arange(1, 11) / 10  # the decay's progress at steps 30..39
    left = 1 - (k if shape == "linear" else np.sqrt(k))
    np.testing.assert_allclose(lr[30:], 0.2 + 1.8 * left, rtol=1e-6, atol=1e-7)
    assert lr[-1] == pytest.approx(0.2, abs=1e-7)  # the floor at the last step
    assert np.all(np.diff(lr[29:]) < 0)
    if shape == "1-sqrt":  # 1-sqrt falls faster early than linear
        lin = 0.2 + 1.8 * (1 - k)
        assert np.all(lr[30:-1] < lin[:-1])


def test_wsd_decays_to_zero_and_cosine_is_unchanged():
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, schedule="wsd")
    assert _lrs(wsd, 100, [99])[0] == 0.0 and decay_start(wsd, 100) == 80
    cos = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lr = _lrs(cos, 110, np.arange(110))
    assert lr[-1] == pytest.approx(0.1, abs=1e-6) and lr[10] == pytest.approx(1.0)


def test_wsd_fields_are_checked_and_enter_the_identity_only_for_wsd():
    for bad in ({"schedule": "step"}, {"decay_shape": "cosine"}, {"decay_fraction": 0.0},
                {"decay_fraction": 1.5}):
        with pytest.raises(UsageError, match="optim"):
            OptimConfig(**bad)
    from scaling.config import Config

    base = Config()
    cosine_other = Config(optim=OptimConfig(decay_fraction=0.5))
    assert base.identity_hash() == cosine_other.identity_hash()  # cosine ignores the wsd fields
    a = Config(optim=OptimConfig(schedule="wsd"))
    b = Config(optim=OptimConfig(schedule="wsd", decay_fraction=0.5))
    assert len({base.identity_hash(), a.identity_hash(), b.identity_hash()}) == 3
