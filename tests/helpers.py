"""Test helpers: the repository root, running a CLI in a subprocess, the tiny run's flags and
a tiny trained run, files under the shared data dir."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from experiments import train as train_cli
from scaling.io import file_lock
from scaling.paths import data_dir

REPO = Path(__file__).resolve().parents[1]


def tiktoken_offline(monkeypatch) -> None:
    """tiktoken with no encodings built yet and no network: a fetch raises."""

    def no_network(url):
        raise ConnectionError(f"offline: {url}")

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)


def data_path(*parts: str) -> Path:
    """A file under the shared data dir; a failure in CI, a skip elsewhere, when missing."""
    p = data_dir().joinpath(*parts)
    if not p.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing in CI: {p}")
        pytest.skip(f"shared data missing: {p}")
    return p


XLA_FLAGS = "--xla_force_host_platform_device_count={} --xla_backend_optimization_level=0"  # LLVM O0: quicker compiles
"""XLA_FLAGS of a subprocess with forced host devices (``.format(devices)``)."""


def run_cli(
    module: str, *args: str, env: dict | None = None, timeout: float = 600, devices: int | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a subprocess (optionally with forced host devices, which
    exist on the CPU platform only: such a subprocess runs on the CPU even where a GPU is)."""
    full_env = dict(os.environ)
    if devices:
        full_env["XLA_FLAGS"] = XLA_FLAGS.format(devices)
        full_env["JAX_PLATFORMS"] = "cpu"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_two_processes(*argv, timeout: float = 600) -> None:
    """``experiments.train argv`` as two local processes of 4 CPU devices each, joined on
    127.0.0.1 with gloo collectives (the README's multi-host form); both must succeed."""
    dist = ["--dist.coordinator", f"127.0.0.1:{free_port()}", "--dist.num_processes", "2"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        procs = [
            pool.submit(
                run_cli,
                "experiments.train",
                *argv,
                *dist,
                "--dist.process_id",
                str(i),
                devices=4,
                timeout=timeout,
            )
            for i in range(2)
        ]
        for p in procs:
            assert p.result().returncode == 0, p.result().stderr[-3000:]


TINY = [
    "--model.n_layer",
    "2",
    "--model.n_head",
    "2",
    "--model.d_model",
    "32",
    "--model.seq_len",
    "32",
    "--train.batch_size",
    "8",
    "--train.tokens",
    "20480",
    "--train.eval_every",
    "40",
    "--train.eval_batches",
    "2",
    "--train.log_every",
    "5",
    "--train.progress",
    "false",
    "--optim.warmup_steps",
    "10",
]
"""A tiny 80-step run on tiny-shakespeare (the default corpus)."""


def tiny_run_dir() -> Path:
    """A tiny trained run (TINY), trained once per test session under the session's cache dir
    (the first test process to ask trains it; the others wait for it)."""
    out = Path(os.environ["SCALING_CACHE_DIR"]) / "tiny-run"
    with file_lock(out.with_name("tiny-run.lock")):
        if not (out / "summary.json").is_file():
            train_cli.main(["--out", str(out), *TINY])
    return out
