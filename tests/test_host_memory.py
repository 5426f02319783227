"""The host allocator policy: chosen by SCALING_HOST_MALLOC, refused with exit code 2 when the
value is unknown, and under ``retain`` a thread's freed block is reused, where glibc's defaults
hand it back to the kernel and fault it in again page by page."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from experiments import train as train_cli
from scaling import host_memory
from scaling.errors import UsageError
from tests.helpers import REPO
from tests.test_bad_input import fails_with_one_line

# Allocates, touches and frees a block of SIZE MB five times from one pool thread (as XLA's pool
# threads allocate a step's buffer); prints the page faults of the last four rounds.
_PROBE = """
import concurrent.futures, ctypes, json, resource, sys
from scaling import host_memory
policy = host_memory.apply()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = int(sys.argv[1]) << 20
faults = []
def round_():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
with concurrent.futures.ThreadPoolExecutor(1) as pool:
    for _ in range(5):
        pool.submit(round_).result()
print(json.dumps({"policy": policy, "faults": faults[1:]}))
"""


def test_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert host_memory.policy() == "retain"
    monkeypatch.setenv(host_memory.ENV, " One-Arena ")
    assert host_memory.policy() == "one-arena"
    monkeypatch.setenv(host_memory.ENV, "jemalloc")
    with pytest.raises(UsageError, match="SCALING_HOST_MALLOC='jemalloc'"):
        host_memory.policy()


def test_a_policy_list_flag_takes_known_names_and_refuses_the_rest():
    assert host_memory.policy_list("system, Retain,one-arena") == ["system", "retain", "one-arena"]
    for bad in ("", ",", "retain,jemalloc"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated list of retain"):
            host_memory.policy_list(bad)


def test_tunables_name_every_setting():
    assert host_memory.glibc_tunables("system") == ""
    retain = dict(kv.split("=") for kv in host_memory.glibc_tunables("retain").split(":"))
    assert retain["glibc.malloc.mmap_max"] == "0" and "glibc.malloc.arena_max" not in retain
    one = dict(kv.split("=") for kv in host_memory.glibc_tunables("one-arena").split(":"))
    assert one == {**retain, "glibc.malloc.arena_max": "1"}


def test_an_unknown_policy_ends_the_cli_before_any_compute(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(host_memory.ENV, "bogus")
    out = tmp_path / "run"
    fails_with_one_line(capsys, train_cli.main, ["--out", out], "SCALING_HOST_MALLOC")
    assert not out.exists()


def _probe(policy: str, mb: int) -> list[int]:
    env = {**os.environ, host_memory.ENV: policy, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _PROBE, str(mb)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["policy"] == policy
    return out["faults"]


@pytest.mark.skipif(not host_memory.is_glibc(), reason="the policies set glibc's mallopt")
def test_a_threads_freed_block_is_reused_where_glibcs_defaults_fault_it_in_again():
    page = os.sysconf("SC_PAGE_SIZE")
    # glibc's defaults map a block over 32 MB afresh each time and fault in most of its pages
    # (fewer where the kernel gives transparent huge pages)
    assert min(_probe("system", 48)) > (48 << 20) // page // 600
    # retain: a block that fits a thread's arena (64 MB) keeps its pages after the first round
    assert max(_probe("retain", 48)) < (48 << 20) // page // 100
    # a larger block in a pool thread is mapped afresh unless every thread uses the main heap
    assert min(_probe("retain", 256)) > (256 << 20) // page // 600
    assert max(_probe("one-arena", 256)) < (256 << 20) // page // 100
