"""The pretraining objectives (train.objective): the attention masks (no position sees what it
must not), the batches each objective builds from the windows, the loss on hand-computed
examples, the bits per byte of the predicted tokens, and training through the CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.objective_plots import arms_vs_compute
from experiments import train as train_cli
from scaling.config import Config, ModelConfig, TrainConfig
from scaling.data import objectives as obj_lib
from scaling.errors import UsageError
from scaling.evaluation import cross_entropy, objective_loss
from scaling.laws.record import NotRun
from scaling.model import GPT, cpu_attention
from scaling.model.attention import prefix_attention, prefix_mask
from scaling.sweep.baseline import sweep_baselines
from tests.helpers import TINY, run_cli

needs_compiler = pytest.mark.skipif(cpu_attention.compiler() is None, reason="no C++ compiler on this machine")

T = 24
MODEL = ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=T, vocab_size=20, vocab_multiple=32)
_GPT = GPT(dataclasses.replace(MODEL, attention="dot_product"))


def _objective(kind: str, **kw) -> obj_lib.Objective:
    cfg = Config(model=MODEL, train=TrainConfig(objective=kind, **kw))
    return obj_lib.Objective.of(cfg)


# ----------------------------------------------------------------------------- the masks


@functools.cache
def _forward(attention: str):
    cfg = dataclasses.replace(MODEL, attention=attention)
    model = GPT(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    return jax.jit(lambda tok, pre: model.apply({"params": params}, tok, prefix_b=pre)), params


def _seen(attention: str, prefix: int | None, j: int, tokens: np.ndarray) -> np.ndarray:
    """Which positions' logits change when token j changes (a 2-layer model: a position's
    output depends on token j exactly when the mask, closed under composition, lets it)."""
    fwd, _ = _forward(attention)
    other = tokens.copy()
    other[0, j] = (other[0, j] + 1) % MODEL.vocab_size
    pre = jnp.asarray([0 if prefix is None else prefix], jnp.int32)
    a, b = np.asarray(fwd(jnp.asarray(tokens), pre)), np.asarray(fwd(jnp.asarray(other), pre))
    return np.any(a != b, axis=-1)[0]


# XLA's masked attention in the default tier; the blocked setting (which hands prefixes to it)
# and the C++ kernel in the slow one
MASK_KINDS = ["dot_product", pytest.param("blocked", marks=pytest.mark.slow)]
MASK_KINDS.append(pytest.param("cpu_kernel", marks=[needs_compiler, pytest.mark.slow]))


@pytest.mark.parametrize("attention", MASK_KINDS)
@settings(max_examples=6, deadline=None)
@given(prefix=st.integers(0, T), j=st.integers(0, T - 1), seed=st.integers(0, 2**16))
def test_a_position_sees_a_token_exactly_when_the_mask_allows(attention, prefix, j, seed):
    """Perturbing token j changes the outputs at positions i with j <= i (causal) or j < prefix
    (the bidirectional prefix; prefix T is the masked LM's full attention), and no others."""
    tokens = np.random.default_rng(seed).integers(0, MODEL.vocab_size, (1, T)).astype(np.int32)
    seen = _seen(attention, prefix, j, tokens)
    i = np.arange(T)
    np.testing.assert_array_equal(seen, (j <= i) | (j < prefix))


def test_causal_mask_without_a_prefix_is_the_models_own():
    """Without prefix_b the model is the causal GPT: prefix 0 gives the same logits."""
    fwd, params = _forward("dot_product")
    tokens = jnp.asarray(np.arange(T)[None] % MODEL.vocab_size, jnp.int32)
    plain = jax.jit(_GPT.apply)({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(fwd(tokens, jnp.zeros(1, jnp.int32))), np.asarray(plain), atol=1e-5)
    assert np.all(_seen("dot_product", None, 5, np.asarray(tokens)) == (np.arange(T) >= 5))


def test_prefix_mask_by_hand():
    m = np.asarray(prefix_mask(4, jnp.asarray([0, 2, 4])))
    np.testing.assert_array_equal(m[0], np.tril(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(m[1], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert m[2].all()


@needs_compiler
@pytest.mark.slow
def test_kernel_prefix_attention_equals_xla_values_and_gradients():
    assert cpu_attention.unavailable() is None
    q, k, v, do = (jax.random.normal(key, (3, 70, 2, 16)) for key in jax.random.split(jax.random.key(1), 4))
    pre = jnp.asarray([0, 37, 70], jnp.int32)

    def vg(fn):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, pre), q, k, v)
        return (out, *vjp(do))

    for name, g, w in zip(("out", "dq", "dk", "dv"), vg(cpu_attention.prefix_attention), vg(prefix_attention)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, rtol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------- the batches


def _windows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, MODEL.vocab_size, (rows, T + 1)).astype(np.int32)


_prepare = jax.jit(obj_lib.prepare, static_argnums=0)


def _prepared(obj, windows, key=0):
    return [np.asarray(a) for a in obj_lib.unpack(_prepare(obj, jnp.asarray(windows), jax.random.key(key)))]


def test_mlm_batch_masks_a_fixed_count_80_10_10():
    obj = _objective("mlm", mask_rate=0.25)
    w = _windows(300)
    inputs, targets, weights, prefix = _prepared(obj, w)
    x = w[:, :T]
    assert (prefix == T).all() and (weights.sum(1) == round(0.25 * T)).all()
    chosen = weights == 1
    np.testing.assert_array_equal(targets[chosen], x[chosen])
    np.testing.assert_array_equal(inputs[~chosen], x[~chosen])  # the others are left as they are
    masked = (inputs == obj.mask_id)[chosen].mean()
    kept = (inputs == x)[chosen].mean()  # kept, or replaced by the token itself (1 in 20)
    assert abs(masked - 0.8) < 0.03 and abs(kept - (0.1 + 0.1 / MODEL.vocab_size)) < 0.03, (masked, kept)
    assert inputs.max() <= obj.mask_id and (inputs[inputs != obj.mask_id] < MODEL.vocab_size).all()


def _undo_span_corruption(obj, inputs, targets, weights, prefix):
    """The text a prefix_denoise row was made from: the prefix with each sentinel replaced by
    the tokens predicted after that sentinel in the causal part."""
    length, n, k = obj.layout()
    seq = np.concatenate([inputs, targets[-1:]])  # the row's whole sequence ...
    seq[1:][weights == 1] = targets[weights == 1]  # ... whose scored targets are the span tokens
    spans, cur = {}, None
    for t in range(prefix, length + 2 * k):
        if seq[t] >= MODEL.vocab_size:
            cur = int(seq[t])
            spans[cur] = []
        else:
            spans[cur].append(int(seq[t]))
    out = []
    for tok in seq[:prefix]:
        out.extend(spans[int(tok)] if tok >= MODEL.vocab_size else [int(tok)])
    return out


def _check_span_corruption(obj, seed):
    length, n, k = obj.layout()
    assert length + 2 * k <= T + 1 and 1 <= k <= n < length
    w = _windows(8, seed)
    starts = set()
    for window, inputs, targets, weights, prefix in zip(w, *_prepared(obj, w, seed)):
        assert prefix == length - n + k and weights.sum() == n
        assert not weights[: prefix - 1].any()  # nothing in the prefix is scored
        sentinels = inputs[:prefix] >= MODEL.vocab_size
        assert sentinels.sum() == k and (inputs[:prefix][sentinels] < MODEL.padded_vocab).all()
        assert _undo_span_corruption(obj, inputs, targets, weights, int(prefix)) == window[:length].tolist()
        starts.add(int(np.argmax(sentinels)))
    return starts


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_prefix_denoise_batch_holds_the_text_and_predicts_exactly_its_spans(seed):
    """The prefix and the spans give back the window's text, only the span tokens are scored,
    and the spans fall at different places in different rows."""
    starts = _check_span_corruption(_objective("prefix_denoise", corrupt_rate=0.3, mean_span=2.0), seed)
    assert len(starts) > 1


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(rate=st.floats(0.05, 0.6), span=st.floats(1.0, 6.0), seed=st.integers(0, 2**16))
def test_prefix_denoise_batches_of_any_rate_and_span_length(rate, span, seed):
    _check_span_corruption(_objective("prefix_denoise", corrupt_rate=rate, mean_span=span), seed)


def test_objective_batches_are_a_function_of_the_key_and_the_row():
    obj = _objective("prefix_denoise", corrupt_rate=0.3, mean_span=2.0)
    w = _windows(8)
    a = np.asarray(_prepare(obj, jnp.asarray(w), jax.random.key(3)))
    np.testing.assert_array_equal(np.asarray(_prepare(obj, jnp.asarray(w), jax.random.key(3))), a)
    w[4:] = _windows(4, seed=1)  # a row's corruption does not depend on the other rows
    np.testing.assert_array_equal(np.asarray(_prepare(obj, jnp.asarray(w), jax.random.key(3)))[:4], a[:4])
    assert not np.array_equal(np.asarray(_prepare(obj, jnp.asarray(w), jax.random.key(4)))[:4], a[:4])


def test_objectives_need_spare_embedding_rows():
    tight = dataclasses.replace(MODEL, vocab_multiple=1)
    with pytest.raises(UsageError, match="vocab_multiple"):
        obj_lib.Objective.of(Config(model=tight, train=TrainConfig(objective="mlm")))
    with pytest.raises(UsageError, match="train.objective"):
        TrainConfig(objective="bert")


def test_causal_configs_hash_as_before_the_objectives():
    """The objective fields are left out of a causal config's hash (existing runs resume)."""
    base = Config()
    assert Config(train=TrainConfig(mask_rate=0.3, mean_span=5)).identity_hash() == base.identity_hash()
    mlm = Config(train=TrainConfig(objective="mlm"))
    assert mlm.identity_hash() != base.identity_hash()
    assert Config(train=TrainConfig(objective="mlm", mean_span=5)).identity_hash() == mlm.identity_hash()
    assert "objective" not in json.dumps(base.identity_hash())


# ----------------------------------------------------------------------------- the loss


_loss = jax.jit(functools.partial(objective_loss, _GPT))


def _params(zero: bool):
    _, params = _forward("dot_product")
    return jax.tree.map(jnp.zeros_like, params) if zero else params


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["causal", "mlm", "prefix_denoise"])
def test_loss_of_a_uniform_model_is_log_vocab(kind):
    """All-zero parameters give equal logits over the vocabulary: ln(vocab_size) per target."""
    obj = _objective(kind)
    packed = _prepare(obj, jnp.asarray(_windows(8)), jax.random.key(0))
    loss = float(_loss(_params(True), packed))
    assert loss == pytest.approx(math.log(MODEL.vocab_size), rel=1e-6)


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize(
    "kind,inputs,targets,weights,prefix",
    [
        # causal: every next token
        ("causal", [3, 4, 5, 6], [4, 5, 6, 7], [1, 1, 1, 1], 0),
        # mlm: positions 1 and 3 masked (mask id 20), bidirectional
        ("mlm", [3, 20, 5, 20], [0, 4, 0, 6], [0, 1, 0, 1], 4),
        # prefix_denoise: text 3 4 5 6 with span "5" -> prefix [3 4 S], then S 5 (S = 21)
        ("prefix_denoise", [3, 4, 21, 6, 21], [0, 0, 0, 0, 5], [0, 0, 0, 0, 1], 4),
    ],
)
def test_loss_by_hand(kind, inputs, targets, weights, prefix):
    """objective_loss is the mean of -log p(target) over the weighted positions, with the logits
    of the model under the batch's prefix mask."""
    fwd, params = _forward("dot_product")
    x = jnp.asarray([inputs], jnp.int32)
    packed = obj_lib.pack(x, jnp.asarray([targets]), jnp.asarray([weights]), jnp.asarray([prefix]))
    logp = _log_softmax(np.asarray(fwd(x, jnp.asarray([prefix]))[0], np.float64))
    want = -np.mean([logp[t, y] for t, (y, w) in enumerate(zip(targets, weights)) if w])
    assert float(_loss(params, packed)) == pytest.approx(want, rel=1e-5)
    if kind == "causal":  # the causal objective is the plain next-token loss
        window = jnp.asarray([inputs + targets[-1:]], jnp.int32)
        assert float(jax.jit(functools.partial(cross_entropy, _GPT))(params, window)) == pytest.approx(want, rel=1e-5)


def test_predicted_bytes_counts_only_the_scored_targets():
    obj = _objective("mlm")
    w = _windows(8)

    class Val:
        def val_batches(self, n):
            yield from [w] * n

    lengths = np.arange(MODEL.padded_vocab) % 3
    _, targets, weights, _ = obj_lib.unpack(obj_lib.eval_batch(obj, w))
    want = 2 * int(sum(lengths[t] for t, wt in zip(np.ravel(targets), np.ravel(weights)) if wt))
    assert obj_lib.predicted_bytes(obj, Val(), 2, lengths) == want > 0


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlm", "prefix_denoise"])
def test_each_objective_trains_through_the_cli_and_resumes_exactly(tmp_path, kind):
    """40 steps through ``experiments.train``: the loss falls below the uniform model's, val_bpb
    is the validation loss per byte of the predicted tokens (byte tokens: one byte each), and a
    rerun that finds only the step-20 checkpoint logs the same losses after it (the objective's
    batches are a function of the seed and the step)."""
    args = [a if a != "20480" else "10240" for a in TINY]
    args += ["--train.objective", kind, "--train.eval_every", "20", "--checkpoint.every_steps", "20"]
    out = tmp_path / "run"
    proc = run_cli("experiments.train", "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["val_loss"] < math.log(257) - 0.5
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2), rel=1e-6)

    def losses():
        return {m["step"]: m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}

    want = losses()
    shutil.rmtree(out / "checkpoints" / "40")
    resumed = train_cli.main(["--out", str(out), *args])
    got = losses()
    late = sorted(s for s in want if s > 20)
    assert late and [got[s] for s in late] == pytest.approx([want[s] for s in late], rel=1e-6)
    assert resumed["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- sweeps


def test_non_causal_arms_get_no_count_model_baseline():
    """The count models score next-token prediction: an arm of another objective gets a
    not-evaluated note (its regime check then reads not evaluated), not a failure."""
    runs = [
        SimpleNamespace(arm=arm, cfg=Config(train=TrainConfig(objective=arm)))
        for arm in ("mlm", "prefix_denoise", "mlm")
    ]
    plan = SimpleNamespace(runs=runs, has_arms=True, spec=SimpleNamespace(fit_loss="val_bpb"))
    result = sweep_baselines(plan, Path("/nonexistent"))
    assert set(result) == {"mlm", "prefix_denoise"}
    for arm, note in result.items():
        assert isinstance(note, NotRun) and note.reason.startswith("not evaluated") and arm in note.reason


def test_arms_vs_compute_plots_each_arm_on_the_bits_per_byte_of_its_predicted_tokens():
    rows = [
        {"arm": arm, "status": "completed", "flops_6nd": c, "val_bpb": bpb}
        for arm, pts in {"causal": [(1e9, 3.0), (3e9, 2.5)], "mlm": [(1e9, 2.0), (3e9, 2.1)]}.items()
        for c, bpb in pts
    ] + [{"arm": "mlm", "status": "diverged", "flops_6nd": 1e10, "val_bpb": "nan"}]
    fig = arms_vs_compute(rows, {"causal": "causal", "mlm": "mlm"})
    ax = fig.axes[0]
    assert "bits per byte of the predicted tokens" in ax.get_ylabel() and "6ND" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["causal: every next token", "mlm: the masked tokens"]
    frontier = [line.get_xydata().tolist() for line in ax.get_lines()]
    assert frontier == [[[1e9, 3.0], [3e9, 2.5]], [[1e9, 2.0], [3e9, 2.1]]]  # the best run of each budget
    assert arms_vs_compute([r | {"status": "diverged"} for r in rows], {}) is None
