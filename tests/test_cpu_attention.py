"""The C++ CPU attention kernel (scaling/cpu_attention.py): exact against the plain masked
softmax, values and gradients, on one device and on sharded meshes; and what happens where
it cannot be used."""

import dataclasses
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.model import GPT, check_attention, cpu_attention, training_attention
from scaling.model.attention import causal_attention
from tests.helpers import REPO, XLA_FLAGS

# Without a C++ compiler the product falls back to XLA's attention (tested below); with one,
# the kernel must build.
needs_compiler = pytest.mark.skipif(cpu_attention.compiler() is None, reason="no C++ compiler on this machine")


def _reference(q, k, v):
    b, t = q.shape[:2]
    return causal_attention(q, k, v, jnp.broadcast_to(jnp.arange(t), (b, t)))


def _prints_ok(code: str, **env) -> None:
    """Run ``code`` in a fresh CPU-only interpreter; it must exit 0 printing just "ok"."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _value_and_grads(fn, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(do))


@needs_compiler
@pytest.mark.parametrize(
    "b,t,h,d", [(2, 256, 4, 32), (2, 100, 3, 16), (2, 77, 2, 64), (1, 33, 2, 128), (3, 1, 2, 32), (1, 40, 1, 16)]
)
def test_kernel_equals_masked_softmax_values_and_gradients(b, t, h, d):
    assert cpu_attention.unavailable() is None
    q, k, v, do = (
        jax.random.normal(key, (b, t, h, d)) * s
        for key, s in zip(jax.random.split(jax.random.key(t * d), 4), (3.0, 3.0, 1.0, 1.0))
    )
    got = jax.jit(lambda *a: _value_and_grads(cpu_attention.causal_attention, *a))(q, k, v, do)
    want = jax.jit(lambda *a: _value_and_grads(_reference, *a))(q, k, v, do)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, rtol=1e-4, err_msg=name)
    # causality: the first query attends only to the first key, so its output is v[0]
    np.testing.assert_allclose(np.asarray(got[0][:, 0]), np.asarray(v[:, 0]), atol=1e-6)


@needs_compiler
def test_loading_the_kernel_keeps_subnormal_numbers_for_the_rest_of_the_process():
    """A library linked with crtfastmath.o (GCC's and Clang's -ffast-math link step) would set
    flush-to-zero for the whole process: numpy's and scipy's subnormals would become 0."""
    code = textwrap.dedent("""
        import jax, numpy as np
        from scaling.model import cpu_attention
        assert cpu_attention.unavailable() is None
        x = jax.random.normal(jax.random.key(0), (1, 8, 1, 16))
        jax.block_until_ready(cpu_attention.causal_attention(x, x, x))
        tiny = np.finfo(np.float64).tiny
        assert tiny / 2 > 0 and np.float32(np.finfo(np.float32).tiny) / np.float32(2) > 0
        print("ok")
    """)
    _prints_ok(code)


_NARROWER = {  # x86 targets whose vector registers are narrower than AVX-512's
    "x86-64-v3": ("avx2", ()),  # AVX2: 8 floats per register, 16 registers
    "x86-64-v2": ("sse4_2", (pytest.mark.slow,)),  # SSE: 4 floats per register
}


@needs_compiler
@pytest.mark.parametrize("march", [pytest.param(m, marks=marks, id=m) for m, (_, marks) in _NARROWER.items()])
def test_kernel_built_for_narrower_vector_registers_equals_masked_softmax(march, tmp_path):
    """The kernel's vectors and row tiles follow the target's registers: built for AVX2 or SSE
    (whatever this CPU's own), it still equals the masked softmax, values and gradients. On a
    CPU without AVX-512, AVX2 is the native build's own path, which every other test runs."""
    flag = _NARROWER[march][0]
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() not in ("x86_64", "AMD64") or flag not in cpuinfo:
        pytest.skip(f"needs an x86-64 CPU with {flag}")
    if march == "x86-64-v3" and "avx512f" not in cpuinfo:
        pytest.skip("this CPU has no AVX-512: its native build is the AVX2 one")
    code = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from scaling.model import cpu_attention
        from tests.test_cpu_attention import _reference, _value_and_grads
        cpu_attention.FLAGS = tuple("-march={march}" if f == "-march=native" else f for f in cpu_attention.FLAGS)
        assert cpu_attention.unavailable() is None
        for b, t, h, d in [(2, 100, 3, 16), (2, 77, 2, 32), (1, 70, 2, 64), (1, 33, 1, 128)]:
            q, k, v, do = (jax.random.normal(key, (b, t, h, d)) for key in jax.random.split(jax.random.key(d), 4))
            got = _value_and_grads(cpu_attention.causal_attention, q, k, v, do)
            want = _value_and_grads(_reference, q, k, v, do)
            for g, w in zip(got, want):
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, rtol=1e-4)
        print("ok")
    """)
    _prints_ok(code, SCALING_CACHE_DIR=str(tmp_path))


@needs_compiler
def test_kernel_on_sharded_meshes_matches_one_device():
    """Batch over data/fsdp and heads over model (shard_map through the rule table): the same
    values and gradients as on one device, also for batches the data axes do not divide."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from scaling import sharding as sh
        from scaling.model import cpu_attention
        q, k, v, do = (jax.random.normal(key, (8, 96, 8, 32)) for key in jax.random.split(jax.random.key(0), 4))
        f = jax.jit(lambda q, k, v, do: (lambda o, vjp: (o, *vjp(do)))(
            *jax.vjp(cpu_attention.causal_attention, q, k, v)))
        want = f(q, k, v, do)
        for shape in ({"data": 2, "fsdp": 1, "model": 4}, {"data": 2, "fsdp": 2, "model": 2},
                      {"data": 1, "fsdp": 1, "model": 8}):
            mesh = sh.make_mesh(shape)
            names = ("act_batch", "act_seq", "act_heads", None)
            args = [jax.device_put(x, sh.logical_to_sharding(jax.sharding.PartitionSpec(*names), mesh))
                    for x in (q, k, v, do)]
            with sh.mesh_context(mesh):
                got = f(*args)
            for g in got:  # each device ran the kernel on its own shard: nothing was gathered
                assert g.sharding.is_equivalent_to(args[0].sharding, 4), (shape, g.sharding)
            for g, w in zip(got, want):
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
        # batches the data axes do not divide: each device takes the batch whole, heads still split
        wants = {b: f(q[:b], k[:b], v[:b], do[:b]) for b in (1, 3)}
        with sh.mesh_context(sh.make_mesh({"data": 2, "fsdp": 1, "model": 4})):
            for b, want in wants.items():
                got = f(q[:b], k[:b], v[:b], do[:b])
                for g, w in zip(got, want):
                    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS=XLA_FLAGS.format(8), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_init_does_not_run_the_kernel(monkeypatch):
    """The parameters do not depend on the attention kernel: the init traces XLA's attention,
    so it needs neither the C++ kernel nor its dummy batch of one split over a mesh."""
    cfg = ModelConfig(d_model=64, n_head=4, seq_len=16, vocab_size=64, attention="cpu_kernel")
    monkeypatch.setattr(cpu_attention, "causal_attention", lambda *a: pytest.fail("the init ran the C++ kernel"))
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    got = GPT(cfg).init(jax.random.key(0), tokens)
    want = GPT(dataclasses.replace(cfg, attention="dot_product")).init(jax.random.key(0), tokens)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@needs_compiler
def test_auto_picks_the_kernel_where_it_fits():
    assert training_attention(ModelConfig(d_model=128, n_head=4, seq_len=256)) == "cpu_kernel"
    assert training_attention(ModelConfig(d_model=32, n_head=4, seq_len=256)) == "blocked"  # head size 8
    assert training_attention(ModelConfig(d_model=128, n_head=4, seq_len=256, dtype="bfloat16")) == "blocked"
    assert training_attention(ModelConfig(d_model=32, n_head=4, seq_len=64)) == "dot_product"
    assert training_attention(ModelConfig(d_model=128, n_head=4, attention="blocked")) == "blocked"


@needs_compiler
def test_cpu_kernel_that_cannot_run_is_refused_up_front():
    with pytest.raises(UsageError, match="head size"):
        ModelConfig(d_model=48, n_head=2, attention="cpu_kernel")
    with pytest.raises(UsageError, match="float32"):
        ModelConfig(d_model=64, n_head=2, attention="cpu_kernel", dtype="bfloat16")
    check_attention(ModelConfig(d_model=64, n_head=2, attention="cpu_kernel"))  # builds here: no error


def test_a_failed_build_is_reported_not_raised(monkeypatch, capsys, tmp_path):
    """A compiler that always fails: built twice, then one line saying why, XLA's attention
    under auto, and nothing left in the cache to load."""
    calls = tmp_path / "calls"
    cxx = tmp_path / "failing-cxx"
    cxx.write_text(f'#!/bin/sh\necho run >> "{calls}"\necho "error: no such luck" >&2\nexit 1\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    cpu_attention.unavailable.cache_clear()
    try:
        reason = cpu_attention.unavailable()
        assert reason is not None and "failed: error: no such luck" in reason and "\n" not in reason
        assert calls.read_text().count("run") == 2  # rebuilt once
        kernels = tmp_path / "cache" / "kernels"
        assert not [p for p in kernels.iterdir() if not p.name.endswith(".lock")]  # no half-written library
        assert training_attention(ModelConfig(d_model=128, n_head=4, seq_len=256)) == "blocked"
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0] and "using XLA's attention" in err[0]
    finally:
        cpu_attention.unavailable.cache_clear()
