"""Sliding-window loss, perplexity and bits per byte against independent computations."""

from __future__ import annotations

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling import evaluation
from scaling.config import ModelConfig
from scaling.evaluation import cross_entropy
from scaling.model import GPT
from tests.helpers import data_path, tiny_run_dir

CFG = ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, vocab_size=50, vocab_multiple=64, init_std=0.1)


@functools.cache
def params():
    """The model's initial parameters (made on first use: collecting the tests compiles nothing)."""
    return nn.unbox(GPT(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


BYTES = np.arange(50) % 3 + 1  # pretend token i stands for (i % 3) + 1 bytes


def test_window_plan_scores_every_target_once_with_enough_context():
    for n_seq in (2, 5, 16, 17, 18, 40, 97):
        for context in (1, 4, 16):
            for stride in sorted({1, min(2, context), context // 2 or 1, context - 1 or 1, context}):
                plan = evaluation.window_plan(n_seq, context, stride)
                scored = []
                for a, first in plan:
                    n = min(context, n_seq - 1)
                    assert 0 <= a and a + n <= n_seq - 1  # inputs a..a+n-1, targets a+1..a+n
                    for k in range(first, n):
                        j = a + 1 + k
                        scored.append(j)
                        assert j - a >= min(j, context - stride + 1), (n_seq, context, stride, a, j)
                assert sorted(scored) == list(range(1, n_seq)), (n_seq, context, stride, plan)


def _naive_max_context_nll(ids_with_bos: list[int]) -> np.ndarray:
    """-log p(x_j | up to seq_len tokens before it) for every j >= 1, one window per target."""
    C, x = CFG.seq_len, np.asarray(ids_with_bos)
    rows, pos = [], []
    for j in range(1, len(x)):
        a = max(0, j - C)
        rows.append(np.pad(x[a : a + C], (0, max(0, C - len(x[a : a + C])))))
        pos.append(j - 1 - a)
    logits = GPT(CFG).apply({"params": params()}, jnp.asarray(np.stack(rows), jnp.int32))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    return -np.array([logp[r, p, x[r + 1]] for r, p in enumerate(pos)])


def test_stride_1_equals_a_naive_max_context_loop():
    ids = np.random.default_rng(0).integers(0, 49, 60).tolist()
    ev = evaluation.evaluate_tokens(CFG, params(), ids, bos=49, byte_lengths=BYTES, stride=1)
    nll = _naive_max_context_nll([49] + ids)
    assert ev.tokens == 60 and ev.windows == 60 - 16 + 1
    assert ev.loss == pytest.approx(nll.mean(), rel=1e-5)
    assert ev.perplexity == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert ev.bytes == int(BYTES[ids].sum())
    assert ev.bits_per_byte == pytest.approx(nll.sum() / math.log(2) / BYTES[ids].sum(), rel=1e-5)
    # a coarser stride gives every token less context, never less than context - stride
    half = evaluation.evaluate_tokens(CFG, params(), ids, bos=49, byte_lengths=BYTES, batch_size=3)
    assert half.stride == 8 and half.tokens == 60 and half.loss != ev.loss
    assert abs(half.loss - ev.loss) < 0.05


def test_non_overlapping_windows_equal_the_training_loss():
    ids = np.random.default_rng(1).integers(0, 49, 3 * 16).tolist()
    ev = evaluation.evaluate_tokens(CFG, params(), ids, bos=49, byte_lengths=BYTES, stride=16)
    seq = np.asarray([49] + ids)
    windows = np.stack([seq[a : a + 17] for a in (0, 16, 32)])
    ref = float(cross_entropy(GPT(CFG), params(), jnp.asarray(windows)))
    assert ev.windows == 3 and ev.loss == pytest.approx(ref, rel=1e-5)


def test_text_shorter_than_the_context_is_one_window():
    ids = [3, 4, 5, 6, 7]
    ev = evaluation.evaluate_tokens(CFG, params(), ids, bos=49, byte_lengths=BYTES)
    assert ev.windows == 1 and ev.tokens == 5
    assert ev.loss == pytest.approx(_naive_max_context_nll([49] + ids).mean(), rel=1e-5)


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run_dir()


def _cli(capsys, *args):
    from experiments import evaluate as cli

    capsys.readouterr()
    try:
        out = cli.main(list(map(str, args)))
    except SystemExit as e:
        return e.code, None, capsys.readouterr()
    return 0, out, capsys.readouterr()


def test_cli_on_a_trained_run(run_dir, tmp_path, capsys):
    text = data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    sample = text[-3000:]  # from the held-out tail
    f = tmp_path / "sample.txt"
    f.write_text(sample, encoding="utf-8")
    rc, out, r = _cli(capsys, "--checkpoint", run_dir, "--text", f)
    assert rc == 0, r.err
    assert json.loads(r.out.strip().splitlines()[-1]) == out
    assert out["tokens"] == out["bytes"] == len(sample.encode("utf-8"))  # byte tokenizer
    assert out["context"] == 32 and out["stride"] == 16
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-9)
    assert out["bits_per_byte"] == pytest.approx(out["loss"] / math.log(2), rel=1e-9)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(out["loss"] - summary["val_loss"]) < 0.5  # the same model on the same kind of text
    rc, out32, _ = _cli(capsys, "--checkpoint", run_dir, "--text", f, "--stride", "32", "--batch-size", "5")
    assert rc == 0 and out32["windows"] == math.ceil(3000 / 32) and out32["tokens"] == 3000


@pytest.mark.parametrize(
    "args, message",
    [
        (("--text", "MISSING"), "text file not found"),
        (("--text", "EMPTY"), "text file is empty"),
        (("--text", "OK", "--stride", "0"), "--stride must be in [1, 32]"),
        (("--text", "OK", "--stride", "33"), "--stride must be in [1, 32]"),
        (("--text", "OK", "--batch-size", "0"), "--batch-size must be >= 1"),
    ],
)
def test_cli_bad_input_exit_2(run_dir, tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").write_text("")
    (tmp_path / "OK").write_text("hello there")
    args = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "OK") else a for a in args]
    rc, _, r = _cli(capsys, "--checkpoint", run_dir, *args)
    last = r.err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error: ") and message in last, r.err
    assert r.out == ""
