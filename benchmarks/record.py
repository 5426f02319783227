"""Where a benchmark's numbers come from: the commit, the date, the machine and the libraries.

Every benchmark that writes JSON writes it through :func:`write_result`, which adds a
``"machine"`` record, so a number is never separated from the machine and code it was
measured on (prose elsewhere names the JSON file instead of a date or a host).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from scaling import host_memory
from scaling.machine import usable_cpus

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy-openblas32", "torch")
_CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma", "neon", "sve")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def cpu_info() -> dict:
    """The CPU's model name, vendor and the vector features that decide kernel speed."""
    info = {
        "arch": platform.machine(),
        "model": platform.processor() or platform.machine(),
        "vendor": None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "features": [],
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    named = False  # the first "model name" line (vendor_id comes before it)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not named:
            info["model"], named = value, True
        elif key == "vendor_id" and info["vendor"] is None:
            info["vendor"] = value
        elif key in ("cpu family", "model", "stepping") and f"x86_{key.split()[-1]}" not in info:
            info[f"x86_{key.split()[-1]}"] = value  # names the CPU where a hypervisor hides its model name
        elif key in ("flags", "Features") and not info["features"]:
            flags = set(value.split())
            info["features"] = [f for f in _CPU_FEATURES if f in flags]
    return info


def accelerators() -> list[str]:
    """The device kinds JAX sees (``cpu`` on a CPU-only machine); empty if JAX is not loaded."""
    jax = sys.modules.get("jax")
    if jax is None:
        return []
    return sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})


def libraries() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_record() -> dict:
    """Commit (with a dirty flag), UTC date, host CPU, devices, Python and library versions."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        # runnable processes over the last 1, 5 and 15 minutes: how busy the machine was
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "devices": accelerators(),
        "host_malloc": host_memory.in_force(),
        "python": platform.python_version(),
        "libraries": libraries(),
    }


def backend() -> str:
    """JAX's default backend (``cpu``, ``gpu``, ``tpu``), or ``cpu`` where JAX is not loaded."""
    jax = sys.modules.get("jax")
    return jax.default_backend() if jax is not None else "cpu"


def result_path(name: str, backend_name: str | None = None) -> Path:
    """``benchmarks/results/<name>_<backend>.json``: where benchmark ``name`` writes by default."""
    return REPO / "benchmarks" / "results" / f"{name}_{backend_name or backend()}.json"


def write_result(path: str | Path, result: dict) -> dict:
    """Write ``result`` with its ``machine`` record as JSON at ``path`` (atomically); returns it."""
    result = {**result, "machine": machine_record()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result
