"""A verified cache of shared libraries compiled at run time, kept the way PyTorch's
``cpp_extension`` and Triton keep theirs: nothing is loaded that this cache did not build.

- The cache directory is created with mode 0700 and must be owned by the current user and not
  writable by group or others; otherwise nothing in it is loaded, since a library placed there
  by someone else would run its constructors inside this process.
- A build compiles into a temporary file in the same directory, records the library's SHA-256
  in ``<name>.sha256`` and renames both into place (library first, each fsynced), under an
  advisory lock on ``<name>.lock``: a process never loads a half-written library, nor a library
  beside the hash of another process's build.
- Loading checks the recorded hash before ``ctypes`` opens the file, so a library without a
  matching hash (foreign, truncated, damaged) is never mapped; a truncated one would crash the
  process with SIGBUS on first use. Any failure to load (no or wrong hash, a file the dynamic
  loader rejects, missing symbols) rebuilds once; a second failure raises
  :class:`KernelCacheError` with one line saying why, and the caller falls back.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jax

from scaling import paths
from scaling.io import file_lock

KERNELS = Path(__file__).parent / "kernels"
"""The C++ sources of the CPU kernels (and the headers they share)."""
# -ffast-math's parts but -funsafe-math-optimizations' switch itself: with that (or -ffast-math)
# on the link line, GCC and Clang link crtfastmath.o, whose constructor sets flush-to-zero and
# denormals-are-zero for the whole process once the library loads, and numpy and scipy code
# running later in the process (a sweep's fit) would silently lose subnormal numbers.
FAST_MATH = (
    "-fno-math-errno",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-fassociative-math",
    "-freciprocal-math",
    "-ffinite-math-only",
    "-fcx-limited-range",
)
FLAGS = ("-O3", "-march=native", *FAST_MATH, "-fPIC", "-shared", "-std=c++17")


class KernelCacheError(Exception):
    """Why a cached library cannot be used, in one line."""


def once(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn()`` computed by the first caller and kept (``cache_clear`` forgets it); a caller that
    comes while it runs (a compile-ahead thread beside the run's own) waits for that result, so
    a library is loaded and its FFI targets registered once. A call that raises keeps nothing."""
    lock = threading.Lock()
    kept: list = []

    @functools.wraps(fn)
    def wrapper():
        if not kept:
            with lock:
                if not kept:
                    kept.append(fn())
        return kept[0]

    def cache_clear() -> None:
        with lock:
            kept.clear()

    wrapper.cache_clear = cache_clear
    return wrapper


def compiler() -> str | None:
    """The C++ compiler to build the kernels with: ``$CXX``, else g++, c++ or clang++ on the PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_flags() -> str:
    """The CPU's feature flags (a build with -march=native is for this CPU only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(stem: str, compiler: str, source: Path, args: Sequence[str]) -> Path:
    """Where the library built from ``source`` (with the shared headers of :data:`KERNELS`) by
    ``compiler`` with ``args`` lives: named by a hash of those, the XLA FFI headers, jaxlib and
    the CPU's feature flags."""
    h = hashlib.sha256()
    headers = sorted(KERNELS.glob("*.h"))
    for part in (
        source.read_bytes(),
        *(p.read_bytes() for p in headers),
        compiler.encode(),
        " ".join(args).encode(),
        jax.ffi.include_dir().encode(),
        jax.lib.__version__.encode(),
        cpu_flags().encode(),
    ):
        h.update(part)
    return paths.cache_dir() / "kernels" / f"{stem}-{h.hexdigest()[:16]}.so"


def compile_library(compiler: str, source: Path, args: Sequence[str], out: Path, after: Sequence[str] = ()) -> None:
    """Compile ``source`` with ``args`` (and ``after`` it: libraries to link) into ``out`` (a
    temporary file :func:`load` then verifies and publishes); :class:`KernelCacheError` with the
    compiler's last line when it fails."""
    cmd = [compiler, *args, "-I", str(KERNELS), "-I", jax.ffi.include_dir(), str(source), *after, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise KernelCacheError(f"building {source.name} failed: {last}")


def hash_path(library: Path) -> Path:
    """Where the SHA-256 recorded for ``library`` at build time lives."""
    return library.with_name(library.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 where missing; raise :class:`KernelCacheError` unless it is
    a directory owned by the current user and not writable by group or others."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.stat(path)
    except OSError as e:
        raise KernelCacheError(f"cannot create the kernel cache directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KernelCacheError(f"the kernel cache path {path} is not a directory")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise KernelCacheError(
            f"the kernel cache directory {path} is owned by uid {st.st_uid}, not by this "
            f"user (uid {os.geteuid()}); not loading libraries from it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelCacheError(
            f"the kernel cache directory {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); not loading libraries from it (chmod 700 it)"
        )
    return path


def load(library: Path, build: Callable[[Path], None], symbols: Iterable[str]) -> ctypes.CDLL:
    """The library at ``library``, verified against its recorded SHA-256 and holding every name
    in ``symbols``; built first with ``build(path)`` (which writes a library to ``path`` or
    raises :class:`KernelCacheError`) when missing, and rebuilt once when it fails to load."""
    symbols = tuple(symbols)
    private_dir(library.parent)
    try:
        with file_lock(library.with_name(library.name + ".lock")):
            try:
                if not library.exists():
                    _publish(library, build)
                return _load_verified(library, symbols)
            except KernelCacheError as first:
                if library.exists():
                    print(f"note: rebuilding a cached kernel library: {first}", file=sys.stderr)
            _discard(library)
            try:
                _publish(library, build)
                return _load_verified(library, symbols)
            except KernelCacheError as second:
                _discard(library)
                raise KernelCacheError(f"{second} (second attempt)") from None
    except OSError as e:  # the lock file or a discard: the directory itself misbehaves
        raise KernelCacheError(f"kernel cache {library.parent}: {e}") from None


def _load_verified(library: Path, symbols: tuple[str, ...]) -> ctypes.CDLL:
    try:
        recorded = hash_path(library).read_text().split()
    except FileNotFoundError:
        raise KernelCacheError(f"{library.name} has no recorded SHA-256 (not built by this cache)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KernelCacheError(f"cannot read the SHA-256 recorded for {library.name}: {e}") from None
    try:
        actual = sha256_file(library)
    except OSError as e:
        raise KernelCacheError(f"cannot read {library.name}: {e.strerror}") from None
    if not recorded or recorded[0] != actual:
        raise KernelCacheError(f"{library.name} does not match the SHA-256 recorded when it was built")
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:
        raise KernelCacheError(f"loading {library.name} failed: {e}") from None
    missing = [name for name in symbols if not hasattr(lib, name)]
    if missing:
        raise KernelCacheError(f"{library.name} lacks the symbols {', '.join(missing)}")
    return lib


def _publish(library: Path, build: Callable[[Path], None]) -> None:
    """Build into a temporary file beside ``library``, then rename it and its hash into place."""
    temps: list[str] = []
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{library.name}.", suffix=".tmp", dir=library.parent)
        os.close(fd)
        temps.append(tmp)
        build(Path(tmp))
        _fsync(tmp)
        digest = sha256_file(Path(tmp))
        fd, tmp_hash = tempfile.mkstemp(prefix=f".{hash_path(library).name}.", suffix=".tmp", dir=library.parent)
        temps.append(tmp_hash)
        with os.fdopen(fd, "w") as f:
            f.write(f"{digest}  {library.name}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, library)
        os.replace(tmp_hash, hash_path(library))
        _fsync(library.parent)
    except OSError as e:
        raise KernelCacheError(f"building {library.name} failed: {e}") from None
    finally:
        for t in temps:
            Path(t).unlink(missing_ok=True)


def _discard(library: Path) -> None:
    hash_path(library).unlink(missing_ok=True)
    library.unlink(missing_ok=True)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
