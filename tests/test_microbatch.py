"""Gradient accumulation over microbatches against the gradients of the whole batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.train import microbatch


def _loss(params, batch_bd, rng):
    """A mean over rows, as the training loss is (rng unused)."""
    del rng
    h_bk = jnp.tanh(batch_bd @ params["w"] + params["b"])
    return jnp.mean(jnp.sum((h_bk - 0.5) ** 2, axis=-1))


def _params(d: int, k: int, seed: int) -> dict:
    kw, kb = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(kw, (d, k)), "b": jax.random.normal(kb, (k,))}


@pytest.mark.parametrize("m", [1, 2, 4])
@settings(max_examples=2, deadline=None)
@given(rows_per_micro=st.integers(1, 3), d=st.integers(1, 5), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_accumulated_gradients_equal_the_whole_batch_gradients(m, rows_per_micro, d, k, seed):
    params = _params(d, k, seed)
    batch = jax.random.normal(jax.random.key(seed + 1), (m * rows_per_micro, d))
    rng = jax.random.key(0)
    want_loss, want_grads = jax.value_and_grad(_loss)(params, batch, rng)
    loss, grads = microbatch.loss_and_grads(_loss, params, batch, rng, m)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5, abs=1e-6)
    for name in params:
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-5, atol=1e-6)


def test_microbatch_i_takes_every_mth_row_and_its_own_dropout_key():
    batch = jnp.arange(8 * 3).reshape(8, 3)
    split = np.asarray(microbatch.split_rows(batch, 4))
    assert split.shape == (4, 2, 3)
    for i in range(4):
        np.testing.assert_array_equal(split[i], np.asarray(batch)[i::4])

    def noisy(params, b, rng):  # depends on the key it is given
        return jnp.mean(b @ params) + jax.random.uniform(rng)

    params, rng = jnp.ones((3,)), jax.random.key(7)
    loss, _ = microbatch.loss_and_grads(noisy, params, batch.astype(jnp.float32), rng, 4)
    want = np.mean(
        [float(noisy(params, jnp.asarray(split[i], jnp.float32), jax.random.fold_in(rng, i))) for i in range(4)]
    )
    assert float(loss) == pytest.approx(want, rel=1e-6)
