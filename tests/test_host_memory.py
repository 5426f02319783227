"""The host allocator policy: chosen by SCALING_HOST_MALLOC, refused with exit code 2 when the
value is unknown, and under ``retain`` a thread's freed block is reused, where glibc's defaults
hand it back to the kernel and fault it in again page by page."""

from __future__ import annotations

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

# Allocates, touches and frees a block of 256 MB from a new thread (as XLA's pool threads
# allocate a step's buffer), five times; prints the page faults of the last four rounds.
_PROBE = """
import ctypes, json, resource, threading
from scaling import host_memory
policy = host_memory.apply()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20
faults = []
def round_():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(5):
    t = threading.Thread(target=round_)
    t.start()
    t.join()
print(json.dumps({"policy": policy, "faults": faults[1:]}))
"""


def test_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert host_memory.policy() == "retain"
    monkeypatch.setenv(host_memory.ENV, " System ")
    assert host_memory.policy() == "system"
    monkeypatch.setenv(host_memory.ENV, "jemalloc")
    with pytest.raises(UsageError, match="SCALING_HOST_MALLOC='jemalloc'"):
        host_memory.policy()


def test_tunables_name_every_setting():
    pairs = dict(kv.split("=") for kv in host_memory.glibc_tunables().split(":"))
    assert pairs == {name: str(value) for _, value, name in host_memory.RETAIN_SETTINGS}
    assert pairs["glibc.malloc.arena_max"] == "1" and pairs["glibc.malloc.mmap_max"] == "0"


def test_an_unknown_policy_ends_the_cli_before_any_compute(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(host_memory.ENV, "bogus")
    out = tmp_path / "run"
    fails_with_one_line(capsys, train_cli.main, ["--out", out], "SCALING_HOST_MALLOC")
    assert not out.exists()


def _probe(policy: str) -> dict:
    env = {**os.environ, host_memory.ENV: policy, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_memory.is_glibc(), reason="the policy sets glibc's mallopt")
def test_retain_reuses_a_threads_freed_block_where_glibcs_defaults_fault_it_in_again():
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    system, retain = _probe("system"), _probe("retain")
    assert system["policy"] == "system" and retain["policy"] == "retain"
    # glibc's defaults: each round maps the block afresh and faults in most of its pages
    # (transparent huge pages, where the kernel gives them, fault fewer)
    assert min(system["faults"]) > pages // 600, system
    # retain: after the first round the block's pages stay with the process
    assert max(retain["faults"]) < pages // 100, retain
    assert max(retain["faults"]) * 10 < min(system["faults"]), (system, retain)
