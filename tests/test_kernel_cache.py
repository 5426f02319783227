"""The C++ attention kernel's build cache (scaling/kernel_cache.py through
scaling/cpu_attention.py) loads nothing it did not build: a planted or truncated library at
the predicted path is rebuilt, never loaded; an unsafe cache directory is refused with one
line and XLA's attention is used; a build that never loads falls back with one line; two
first builds at once both end with one verified library; threads asking at once load it once."""

from __future__ import annotations

import collections
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import pytest

from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.model import check_attention, cpu_attention, kernel_cache, training_attention
from tests.helpers import REPO, TINY, run_cli

pytestmark = pytest.mark.skipif(cpu_attention.compiler() is None, reason="no C++ compiler on this machine")

SESSION_CACHE = Path(os.environ["SCALING_CACHE_DIR"])  # set by conftest before collection
Built = collections.namedtuple("Built", "library digest_line")

# Run in a fresh process: the kernel loads (or the process dies, e.g. of SIGBUS) and matches
# XLA's attention.
KERNEL_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from scaling.model import cpu_attention
    from scaling.model.attention import causal_attention
    reason = cpu_attention.unavailable()
    assert reason is None, reason
    q, k, v = (jax.random.normal(key, (2, 40, 2, 16)) for key in jax.random.split(jax.random.key(0), 3))
    got = jax.jit(cpu_attention.causal_attention)(q, k, v)
    want = causal_attention(q, k, v, jnp.broadcast_to(jnp.arange(40), (2, 40)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    print("ok")
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """The real kernel library and its hash line, built once through the product's own path."""
    cache = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCALING_CACHE_DIR", str(cache))
        mp.setattr(jax.ffi, "register_ffi_target", lambda *a, **k: None)
        cpu_attention.unavailable.cache_clear()
        assert cpu_attention.unavailable() is None
        lib = cpu_attention.library_path(cpu_attention.compiler())
    cpu_attention.unavailable.cache_clear()
    assert stat.S_IMODE((cache / "kernels").stat().st_mode) == 0o700
    assert kernel_cache.hash_path(lib).read_text().split()[0] == kernel_cache.sha256_file(lib)
    return Built(lib.read_bytes(), kernel_cache.hash_path(lib).read_text())


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    """A library whose constructor writes a marker file when loaded, and that marker's path."""
    d = tmp_path_factory.mktemp("planted")
    src, lib, marker = d / "planted.cc", d / "planted.so", d / "constructor-ran"
    src.write_text(
        "#include <cstdio>\n__attribute__((constructor)) static void planted() {\n"
        f'  if (std::FILE *f = std::fopen("{marker}", "w")) '
        '{ std::fputs("ran", f); std::fclose(f); }\n}\n'
    )
    subprocess.run([cpu_attention.compiler(), "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    # the marker is what loading it leaves behind
    subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(lib)], check=True)
    assert marker.exists()
    marker.unlink()
    return lib, marker


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path) -> Path:
    """A fresh SCALING_CACHE_DIR per test; ``unavailable`` recomputed inside it. XLA refuses a
    second registration of the kernel's targets from another copy of the library, so the
    in-process tests only record them (the subprocesses register and run the kernel)."""
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(jax.ffi, "register_ffi_target", lambda *a, **k: None)
    cpu_attention.unavailable.cache_clear()
    yield tmp_path / "cache"
    cpu_attention.unavailable.cache_clear()


def _target() -> Path:
    return cpu_attention.library_path(cpu_attention.compiler())


def _plant(data: bytes, digest_line: str | None, mode: int = 0o700) -> Path:
    """Put ``data`` at the predicted library path, with ``digest_line`` as its hash file."""
    target = _target()
    target.parent.mkdir(parents=True, mode=mode)
    target.write_bytes(data)
    if digest_line is not None:
        kernel_cache.hash_path(target).write_text(digest_line)
    return target


def _verified(target: Path, built: Built) -> bool:
    return target.read_bytes() == built.library and kernel_cache.hash_path(target).read_text().split()[
        0
    ] == kernel_cache.sha256_file(target)


def _copying_build(monkeypatch, built: Built, data: bytes | None = None) -> list[Path]:
    """Replace the compiler run by a copy of ``data`` (default: the real library); returns the
    list of paths it was asked to build."""
    calls: list[Path] = []

    def build(compiler, out):
        calls.append(out)
        Path(out).write_bytes(built.library if data is None else data)

    monkeypatch.setattr(cpu_attention, "_build", build)
    return calls


def _run(code: str, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("hash_file", ["none", "of the real library"])
def test_a_planted_library_is_never_loaded_but_rebuilt(monkeypatch, capsys, built, planted, hash_file):
    lib, marker = planted
    target = _plant(lib.read_bytes(), None if hash_file == "none" else built.digest_line)
    builds = _copying_build(monkeypatch, built)
    assert cpu_attention.unavailable() is None
    assert not marker.exists()  # its constructor never ran
    assert len(builds) == 1 and _verified(target, built)
    assert "rebuilding" in capsys.readouterr().err
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_truncated_library_is_rebuilt_not_loaded(built, cache):
    """The first half of the real library beside the real library's hash: mapping it would
    SIGBUS; it is rebuilt instead, and the kernel runs, in a fresh process."""
    target = _plant(built.library[: len(built.library) // 2], built.digest_line)
    whole = target.parent.parent / "whole.so"
    whole.write_bytes(built.library)
    copy_build = (
        "import shutil\nfrom scaling.model import cpu_attention\n"  # the compiler's work is tested elsewhere
        f"cpu_attention._build = lambda cxx, out: shutil.copyfile({str(whole)!r}, out)\n"
    )
    proc = _run(copy_build + KERNEL_CHECK)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.strip() == "ok", err[-3000:]
    assert "does not match the SHA-256" in err
    assert _verified(target, built)


@pytest.mark.parametrize("unsafe", ["mode 0777", "another owner"])
def test_an_unsafe_cache_directory_is_refused_with_one_line(monkeypatch, capsys, built, planted, unsafe):
    lib, marker = planted
    target = _plant(lib.read_bytes(), f"{kernel_cache.sha256_file(lib)}  {_target().name}\n")  # hash matches
    if unsafe == "mode 0777":
        target.parent.chmod(0o777)
        expected = "writable by group or others (mode 0777)"
    else:
        owner = target.parent.stat().st_uid
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
        expected = f"owned by uid {owner}, not by this user"
    builds = _copying_build(monkeypatch, built)

    reason = cpu_attention.unavailable()
    assert reason is not None and expected in reason and "\n" not in reason
    assert not marker.exists() and not builds
    assert target.read_bytes() == lib.read_bytes()  # someone else's directory is left as it is
    # auto: XLA's attention, with one note line
    assert training_attention(ModelConfig(d_model=128, n_head=4, seq_len=256)) == "blocked"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "using XLA's attention" in err[0]
    # cpu_kernel asked for explicitly: refused up front
    with pytest.raises(UsageError, match="cpu_kernel is unavailable: the kernel cache directory"):
        check_attention(ModelConfig(d_model=64, n_head=2, attention="cpu_kernel"))


@pytest.mark.parametrize("output", ["not a library", "no kernel symbols"])
def test_a_library_that_never_loads_falls_back_with_one_line(monkeypatch, capsys, built, tmp_path, output):
    if output == "not a library":
        data, expected = b"\x7fELF but not really" * 100, "loading causal_attention_cpu-"
    else:
        src = tmp_path / "empty.cc"
        src.write_text('extern "C" int unrelated() { return 0; }\n')
        subprocess.run(
            [cpu_attention.compiler(), "-shared", "-fPIC", str(src), "-o", str(tmp_path / "e.so")], check=True
        )
        data, expected = (tmp_path / "e.so").read_bytes(), "lacks the symbols ScalingCausalAttentionFwd"
    builds = _copying_build(monkeypatch, built, data)
    reason = cpu_attention.unavailable()
    assert reason is not None and expected in reason and "second attempt" in reason and "\n" not in reason
    assert len(builds) == 2  # rebuilt once
    assert [p.name for p in _target().parent.iterdir()] == [_target().name + ".lock"]  # nothing left to load
    assert training_attention(ModelConfig(d_model=128, n_head=4, seq_len=256)) == "blocked"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("note: the CPU attention kernel is unavailable") and expected in err[-1]


def test_two_first_builds_at_once_both_load_one_verified_library(cache, tmp_path):
    """Two processes start on an empty cache together (the build takes seconds, so theirs would
    overlap): one builds, the other waits for it and loads the same library."""
    calls, cxx = tmp_path / "calls", tmp_path / "counting-cxx"
    cxx.write_text(f'#!/bin/sh\necho run >> "{calls}"\nexec "{cpu_attention.compiler()}" "$@"\n')
    cxx.chmod(0o755)
    procs = [_run(KERNEL_CHECK, CXX=str(cxx)) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err[-3000:]
        assert "rebuilding" not in err  # neither saw the other's half-published build
    assert calls.read_text().count("run") == 1
    [library] = (cache / "kernels").glob("*.so")
    assert kernel_cache.hash_path(library).read_text().split()[0] == kernel_cache.sha256_file(library)
    assert sorted(p.name for p in library.parent.iterdir()) == sorted(
        [library.name, library.name + ".sha256", library.name + ".lock"]
    )


@pytest.mark.e2e
def test_training_with_a_planted_library_rebuilds_and_never_runs_it(built, planted, cache, tmp_path):
    lib, marker = planted
    target = _plant(lib.read_bytes(), built.digest_line)
    out = tmp_path / "run"
    proc = run_cli(
        "experiments.train",
        "--out",
        out,
        *TINY,
        "--train.tokens",
        "2560",
        "--model.attention",
        "auto",
        env={"SCALING_CACHE_DIR": str(cache), "SCALING_COMPILE_CACHE": str(SESSION_CACHE / "jax-compile")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    assert "unavailable" not in proc.stderr and "does not match the SHA-256" in proc.stderr
    assert _verified(target, built)  # rebuilt and used: the kernel took the run's attention
    assert (out / "summary.json").is_file()


@pytest.mark.e2e
def test_an_explicit_cpu_kernel_with_an_unsafe_cache_is_refused_by_the_cli(cache, tmp_path):
    kernels = cache / "kernels"
    kernels.mkdir(parents=True)
    kernels.chmod(0o777)
    out = tmp_path / "run"
    proc = run_cli(
        "experiments.train",
        "--out",
        out,
        *TINY,
        "--model.attention",
        "cpu_kernel",
        env={"SCALING_CACHE_DIR": str(cache)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "writable by group or others" in lines[0], proc.stderr[-3000:]
    assert not (out / "config.yaml").exists()
    assert stat.S_IMODE(kernels.stat().st_mode) == 0o777 and not list(kernels.iterdir())


BUILD_BOTH = textwrap.dedent("""
    import os
    from scaling.config import ModelConfig
    from scaling.model import build_cpu_kernels, cpu_attention, cpu_dense
    build_cpu_kernels(ModelConfig(n_layer=2, d_model=64, n_head=4, dtype=os.environ["MODEL_DTYPE"]), 1)
    if os.environ["MODEL_DTYPE"] == "float32":
        assert cpu_attention.unavailable() is None and cpu_dense.unavailable() is None
    print("ok")
""")


@pytest.mark.parametrize("dtype, builds", [("float32", 2), ("bfloat16", 0)])
def test_a_runs_two_libraries_build_at_once_and_only_those_it_uses(cache, tmp_path, dtype, builds):
    """On an empty cache a float32 model's attention kernel and dense product compile in two
    compiler runs that overlap in time; a bfloat16 model, which uses neither, builds nothing."""
    pytest.importorskip("scipy_openblas32")  # (the dense product's BLAS)
    log, cxx = tmp_path / "log", tmp_path / "timing-cxx"
    cxx.write_text(
        f'#!/bin/sh\necho "start $(date +%s.%N)" >> "{log}"\n"{cpu_attention.compiler()}" "$@"\n'
        f'rc=$?\necho "end $(date +%s.%N)" >> "{log}"\nexit $rc\n'
    )
    cxx.chmod(0o755)
    out, err = _run(BUILD_BOTH, CXX=str(cxx), MODEL_DTYPE=dtype).communicate(timeout=300)
    assert out.strip() == "ok", err[-3000:]
    events = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    starts = [float(t) for kind, t in events if kind == "start"]
    ends = [float(t) for kind, t in events if kind == "end"]
    assert len(starts) == len(ends) == builds
    assert len(list((cache / "kernels").glob("*.so"))) == builds
    if builds:
        assert max(starts) < min(ends), events  # the two compiler runs overlapped


def test_threads_asking_at_once_load_and_register_a_library_once(monkeypatch, built):
    """A compile-ahead thread and the run's own thread both asking whether the kernel is
    available: the first loads and registers it, the others wait for its answer."""
    _copying_build(monkeypatch, built)
    calls = collections.Counter()
    real_load = kernel_cache.load

    def slow_load(*args, **kwargs):
        calls["load"] += 1
        time.sleep(0.2)  # long enough for every thread to arrive while the first is loading
        return real_load(*args, **kwargs)

    monkeypatch.setattr(kernel_cache, "load", slow_load)
    monkeypatch.setattr(jax.ffi, "register_ffi_target", lambda *a, **k: calls.update(["register"]))
    cpu_attention.unavailable.cache_clear()
    try:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(cpu_attention.unavailable())) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [None] * 6
        assert calls == {"load": 1, "register": 2}  # the forward and backward targets, once each
    finally:
        cpu_attention.unavailable.cache_clear()
