"""Model properties: real parameter counts match the analytic ones, causality, determinism."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig
from scaling.flops import param_counts
from scaling.model import GPT, stack_layers, unstack_layers
from scaling.sharding import make_mesh
from scaling.train.optimizer import make_optimizer
from scaling.train.programs import ShapePrograms
from scaling.train.step import TrainState, train_step

configs = st.builds(
    lambda n_layer, n_head, head, ff, vocab, mult, pos, norm, bias, tie, mlp, seq: ModelConfig(
        n_layer=n_layer,
        n_head=n_head,
        d_model=n_head * head,
        d_ff=ff,
        vocab_size=vocab,
        vocab_multiple=mult,
        position=pos,
        norm=norm,
        bias=bias,
        tie_embeddings=tie,
        mlp=mlp,
        seq_len=seq,
    ),
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from([2, 4, 8]),
    st.sampled_from([0, 24, 40]),
    st.integers(2, 700),
    st.sampled_from([1, 8, 64]),
    st.sampled_from(["learned", "rotary"]),
    st.sampled_from(["layernorm", "rmsnorm"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["gelu", "swiglu"]),
    st.integers(4, 40),
)


@settings(max_examples=25, deadline=None)
@given(configs)
def test_analytic_param_counts_equal_real_counts(cfg):
    variables = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    params = nn.unbox(variables["params"])
    real = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    embed = (
        params["wte"]["embedding"].size
        + (params["wpe"].size if "wpe" in params else 0)
        + (params["lm_head"]["kernel"].size if "lm_head" in params else 0)
    )
    counts = param_counts(cfg)
    assert counts["n_params"] == real
    assert counts["n_params_nonembed"] == real - embed


def _cfg(**kw):
    base = dict(n_layer=2, n_head=2, d_model=16, seq_len=12, vocab_size=50, vocab_multiple=8)
    return ModelConfig(**{**base, **kw})


def _with_embedding_delta(model, variables, tokens, delta_btd):
    """The model's logits with ``delta_btd`` added to the token embeddings (a test-only hook:
    Flax's method interception around the embedding lookup)."""

    def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
            out = out + delta_btd
        return out

    with nn.intercept_methods(add_delta):
        return model.apply(variables, tokens)


def test_causality_gradient_of_logits_wrt_future_tokens_is_zero():
    for kw in (dict(), dict(position="rotary", mlp="swiglu", norm="rmsnorm", bias=False, tie_embeddings=False)):
        cfg = _cfg(**kw)
        model = GPT(cfg)
        tokens = jax.random.randint(jax.random.key(1), (2, cfg.seq_len), 0, cfg.vocab_size)
        variables = model.init(jax.random.key(0), tokens)
        positions = (0, 5, cfg.seq_len - 1)

        def f(delta_btd):  # the logits of each checked position, summed over batch and vocabulary
            logits = _with_embedding_delta(model, variables, tokens, delta_btd)
            return logits[:, positions].sum(axis=(0, 2))

        g_pbtd = jax.jit(jax.jacrev(f))(jnp.zeros((*tokens.shape, cfg.d_model)))  # one backward pass per position
        for i, g_btd in zip(positions, g_pbtd):
            norms = np.abs(np.asarray(g_btd)).sum(axis=(0, 2))
            assert np.all(norms[i + 1 :] == 0.0), (kw, i, norms)
            assert np.all(norms[: i + 1] > 0.0), (kw, i, norms)


def test_padded_vocab_is_masked_and_output_deterministic():
    cfg = _cfg(vocab_size=50, vocab_multiple=64)
    model = GPT(cfg)
    tokens = jnp.arange(24).reshape(2, 12) % 50
    v = model.init(jax.random.key(0), tokens)
    a, b = model.apply(v, tokens), model.apply(v, tokens)
    assert a.shape == (2, 12, 64)
    np.testing.assert_array_equal(a, b)
    assert float(jax.nn.softmax(a)[..., 50:].sum()) == 0.0
    v2 = model.init(jax.random.key(0), tokens)
    for x, y in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
        np.testing.assert_array_equal(nn.unbox(x), nn.unbox(y))


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axis_names(scan):
    cfg = _cfg(bias=True, tie_embeddings=False, mlp="swiglu", scan_layers=scan)
    variables = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    specs = nn.get_partition_spec(variables["params"])
    shapes = nn.unbox(variables["params"])
    for spec, shape in zip(
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)), jax.tree.leaves(shapes)
    ):
        assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec), spec


def test_blocked_attention_equals_full_causal_attention():
    from scaling.model.attention import blocked_causal_attention, causal_attention

    q, k, v, g = (jax.random.normal(jax.random.key(i), (4, 256, 2, 16)) for i in range(4))
    full = lambda q, k, v: causal_attention(q, k, v, jnp.broadcast_to(jnp.arange(256), (4, 256)))  # noqa: E731

    def blocked(block, chunk):
        return lambda q, k, v: blocked_causal_attention(q, k, v, block, chunk)

    want = full(q, k, v)
    grad = lambda f: jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * g), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    want_grads = grad(full)
    for block, chunk in ((32, 1), (64, 2), (100, 4), (128, 3), (256, 1)):
        np.testing.assert_allclose(blocked(block, chunk)(q, k, v), want, atol=2e-6)
        for got, ref in zip(grad(blocked(block, chunk)), want_grads):
            np.testing.assert_allclose(got, ref, atol=2e-5)


@pytest.mark.slow
def test_scanned_layers_equal_the_loop_in_logits_and_one_train_step():
    """model.scan_layers changes the layout, not the function: with the loop's parameters stacked,
    the scanned model gives the same logits and one AdamW step moves both alike."""
    cfg = _cfg(n_layer=3, position="rotary", mlp="swiglu", attention="dot_product")
    scfg = dataclasses.replace(cfg, scan_layers=True)
    batch = jax.random.randint(jax.random.key(1), (4, cfg.seq_len + 1), 0, cfg.vocab_size)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), batch[:, :-1])["params"])
    stacked = stack_layers(params, cfg.n_layer)
    scanned_shapes = jax.eval_shape(lambda: nn.unbox(GPT(scfg).init(jax.random.key(0), batch[:, :-1])["params"]))
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned_shapes)
    np.testing.assert_allclose(
        GPT(scfg).apply({"params": stacked}, batch[:, :-1]),
        GPT(cfg).apply({"params": params}, batch[:, :-1]),
        atol=1e-5,
        rtol=1e-5,
    )

    optim = OptimConfig(warmup_steps=0)
    tx = make_optimizer(optim)
    run = {
        "key": jax.random.key_data(jax.random.key(0)),
        "total_steps": jnp.int32(10),
        "lr": jnp.float32(optim.lr),
        "warmup_steps": jnp.int32(optim.warmup_steps),
        "nan_step": jnp.int32(-1),
    }

    def step(c, p):
        state = TrainState(step=jnp.int32(0), params=p, opt_state=tx.init(p))
        return train_step(GPT(c), tx, optim, 1, state, batch, run)

    (loop_state, loop_m), (scan_state, scan_m) = step(cfg, params), step(scfg, stacked)
    np.testing.assert_allclose(scan_m["loss"], loop_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(scan_m["grad_norm"], loop_m["grad_norm"], rtol=1e-4)
    assert optax.tree.norm(jax.tree.map(jnp.subtract, scan_state.params, stacked)) > 0
    # Adam's first update is about lr * sign(gradient): where a gradient is near eps, rounding
    # differences of the two layouts move it by a fraction of lr
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=0.05 * optim.lr, rtol=1e-4),
        unstack_layers(scan_state.params, cfg.n_layer),
        loop_state.params,
    )


def test_scanned_layers_count_the_flops_of_the_loop():
    """XLA counts a loop's body once: flops_xla of a scanned model is counted on the loop."""
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})
    counts = [
        ShapePrograms(
            Config(
                model=_cfg(n_layer=3, attention="dot_product", scan_layers=scan),
                train=TrainConfig(batch_size=4, microbatches=1),
            ),
            mesh,
            10,
        ).xla_flops_per_step()
        for scan in (False, True)
    ]
    assert counts[0] == counts[1] > 0
