"""The model's dense products through OpenBLAS (scaling/model/cpu_dense.py): exact against a
float64 product, values and gradients in every transpose; the GPT the same with them as with
XLA's dots; where ``model.dense`` resolves to each; and what is refused before any compute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import Config, ModelConfig, TrainConfig
from scaling.errors import UsageError
from scaling.model import GPT, check_dense, cpu_dense, dense_kind
from scaling.sharding import make_mesh, mesh_shape
from scaling.train import ShapePrograms


@pytest.fixture
def blas():
    """Skips the test where OpenBLAS's product cannot be built (asked on first use: collecting
    the tests builds nothing)."""
    reason = cpu_dense.unavailable()
    if reason is not None:
        pytest.skip(reason)


needs_blas = pytest.mark.usefixtures("blas")


def _op(x, t):
    return x.T if t else x


@needs_blas
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 5, 3), (33, 64, 17), (300, 96, 40), (24, 200, 520)])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_product_and_its_gradients_equal_float64(m, k, n, ta, tb):
    keys = jax.random.split(jax.random.key(m * 1000 + k * 10 + n), 3)
    a = _op(jax.random.normal(keys[0], (m, k)), ta)  # stored as op(a)'s operand
    b = _op(jax.random.normal(keys[1], (k, n)), tb)
    dc = jax.random.normal(keys[2], (m, n))
    c, vjp = jax.vjp(jax.jit(lambda a, b: cpu_dense.matmul(a, b, trans_a=ta, trans_b=tb)), a, b)
    da, db = vjp(dc)
    a64, b64, dc64 = (np.asarray(x, np.float64) for x in (a, b, dc))
    c64 = _op(a64, ta) @ _op(b64, tb)
    da64 = _op(dc64 @ _op(b64, tb).T, ta)
    db64 = _op(_op(a64, ta).T @ dc64, tb)
    for got, want in ((c, c64), (da, da64), (db, db64)):
        assert got.shape == want.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.sqrt(k + max(m, n)))


@needs_blas
def test_products_are_deterministic_and_split_over_threads_like_one_call():
    """A product big enough to be cut into slabs per thread equals the same product computed
    in slices one at a time, and two calls agree bitwise."""
    a = jax.random.normal(jax.random.key(0), (512, 96))
    b = jax.random.normal(jax.random.key(1), (96, 256))
    f = jax.jit(cpu_dense.matmul)
    whole = np.asarray(f(a, b))
    np.testing.assert_array_equal(whole, np.asarray(f(a, b)))
    halves = np.concatenate([np.asarray(f(a[:256], b)), np.asarray(f(a[256:], b))])
    np.testing.assert_allclose(whole, halves, rtol=1e-6, atol=1e-5)


@needs_blas
@pytest.mark.parametrize("axes", [1, 2])
def test_dense_contracts_trailing_axes_with_leading_ones_as_tensordot(axes):
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
    w = jax.random.normal(jax.random.key(1), (3, 4, 6)[2 - axes :])
    got = jax.jit(lambda x, w: cpu_dense.dense(x, w, axes))(x, w)
    want = jnp.tensordot(x, w, axes, precision="highest")
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@needs_blas
def test_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="float32 matrices"):
        cpu_dense.matmul(jnp.ones((2, 3), jnp.bfloat16), jnp.ones((3, 2), jnp.bfloat16))
    with pytest.raises(ValueError, match="contracting sizes differ"):
        cpu_dense.matmul(jnp.ones((2, 3)), jnp.ones((4, 2)))
    # anything but Dense's own contraction goes to XLA
    x = jnp.arange(24.0).reshape(2, 3, 4)
    dn = (((1,), (0,)), ((), ()))
    np.testing.assert_array_equal(
        cpu_dense.dot_general(x, jnp.ones((3, 5)), dn), jax.lax.dot_general(x, jnp.ones((3, 5)), dn)
    )


def _loss_and_grads(cfg: ModelConfig, tokens):
    model = GPT(cfg)
    params = model.init(jax.random.key(0), tokens[:, :-1])

    def loss(p):
        logits = model.apply(p, tokens[:, :-1], train=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return params, *jax.jit(jax.value_and_grad(loss))(params)


@needs_blas
@pytest.mark.parametrize("tie,mlp,bias", [(True, "gelu", True), (False, "swiglu", False)])
def test_gpt_with_blas_equals_gpt_with_xla_dots(tie, mlp, bias):
    base = ModelConfig(
        n_layer=2, d_model=64, n_head=4, seq_len=32, vocab_size=100, tie_embeddings=tie, mlp=mlp, bias=bias
    )
    tokens = jax.random.randint(jax.random.key(1), (3, 33), 0, 100)
    p_x, l_x, g_x = _loss_and_grads(dataclasses.replace(base, dense="xla"), tokens)
    p_b, l_b, g_b = _loss_and_grads(dataclasses.replace(base, dense="blas"), tokens)
    # the same parameters (the init traces XLA's dots either way), the same loss and gradients
    jax.tree.map(np.testing.assert_array_equal, p_x, p_b)
    np.testing.assert_allclose(float(l_b), float(l_x), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), g_x, g_b)


@needs_blas
def test_auto_takes_blas_on_one_cpu_device_for_float32_only():
    cfg = ModelConfig()
    assert dense_kind(cfg, 1) == "blas"
    assert dense_kind(cfg, 2) == "xla"
    assert dense_kind(dataclasses.replace(cfg, dtype="bfloat16"), 1) == "xla"
    assert dense_kind(dataclasses.replace(cfg, dense="xla"), 1) == "xla"


def test_explicit_blas_is_refused_before_any_compute_where_it_cannot_run():
    with pytest.raises(UsageError, match="model.dense must be auto, blas or xla"):
        ModelConfig(dense="mkl")
    with pytest.raises(UsageError, match="model.dense=blas needs float32"):
        ModelConfig(dense="blas", dtype="bfloat16")
    with pytest.raises(UsageError, match="mesh of one device, not 4"):
        check_dense(ModelConfig(dense="blas"), 4)
    check_dense(ModelConfig(dense="xla"), 4)


def test_without_the_library_auto_falls_back_and_blas_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(cpu_dense, "unavailable", lambda: "the scipy-openblas32 package is not installed")
    assert dense_kind(ModelConfig(), 1) == "xla"
    with pytest.raises(UsageError, match="model.dense=blas is unavailable: the scipy-openblas32 package"):
        check_dense(ModelConfig(dense="blas"), 1)


@needs_blas
def test_xla_flop_count_is_that_of_the_step_with_xla_dots():
    """The custom calls count as nothing in XLA's cost analysis: the count is taken on the step
    written with XLA's dots, so it does not depend on model.dense."""
    model = ModelConfig(n_layer=2, d_model=64, n_head=4, seq_len=32, vocab_size=256)
    counts = {}
    for dense in ("blas", "xla"):
        cfg = dataclasses.replace(
            Config(), model=dataclasses.replace(model, dense=dense), train=TrainConfig(batch_size=4, tokens=10**6)
        )
        counts[dense] = ShapePrograms(cfg, make_mesh(mesh_shape(cfg.mesh, 1)), total_steps=10).xla_flops_per_step()
    assert counts["blas"] == counts["xla"] > 0
