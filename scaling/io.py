"""Files every writer and reader shares: atomic writes that honour the umask, JSON and JSON
Lines reading, and advisory locks.

An atomic write goes to a temporary file beside the target (created like ``open`` creates
files: mode 0666 less the umask), is flushed to disk, renamed over the target and the
directory entry synced, so a reader sees the old file or the new one, never a part, and a
crash never leaves the target half written.

A JSON Lines file is appended to line by line, so a kill can leave its last line torn:
:func:`read_jsonl` drops a last line that does not parse; any other bad line is an error.

A lock is an exclusive ``flock`` on a file that records its holder (pid and host). The kernel
releases it when the holding process dies, so a killed run never leaves its directory locked.
A run directory is held through ``DIR/.lock`` (:func:`hold_directory`) for a whole training
run, by ``experiments.train`` and by a sweep for each of its runs alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import yaml

from scaling.errors import UsageError, read_input_text
from scaling.fields import show

try:
    import fcntl
except ImportError:  # no flock (Windows): locks are not taken there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


# ----------------------------------------------------------------------------- atomic writes


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable (a no-op where directories
    cannot be opened for syncing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):  # Windows opens no directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the new file's mode is 0666 less
    the umask, as for a file created with ``open``. The parent directory must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def probe_writable(directory: str | Path) -> None:
    """Raise the OSError a write into ``directory`` would meet (read-only, gone, not a
    directory), by creating and removing an empty file there."""
    probe = Path(directory) / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    probe.unlink()


# ----------------------------------------------------------------------------- reading


def read_json(path: str | Path, what: str = "file") -> object:
    """The JSON value in ``path``; UsageError naming the file when it is missing, unreadable or
    not JSON."""
    text = read_input_text(path, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{what} {path} is not valid JSON: {str(e)[:80]}") from None


def parse_jsonl(text: str, where: str = "") -> list:
    """The values of the non-blank lines of JSON Lines ``text``; a last line that does not
    parse (torn by a kill) is dropped, any other is a UsageError naming ``where`` and the line."""
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            if i == last:
                break
            raise UsageError(f"{where} line {i + 1} is not valid JSON") from None
    return out


def read_jsonl(path: str | Path, what: str = "file") -> list:
    """:func:`parse_jsonl` of the file ``path`` (UsageError when it is missing or unreadable)."""
    return parse_jsonl(read_input_text(path, what, errors="replace"), str(path))


# ----------------------------------------------------------------------------- locks


class LockHeld(UsageError):
    """Another process holds a lock this one needs without waiting."""


def _holder_text() -> bytes:
    return f"pid {os.getpid()} on {socket.gethostname()}\n".encode()


def lock_holder(path: str | Path) -> str:
    """Who holds the lock file ``path``, as it recorded itself ("pid 123 on host")."""
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process"


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """An advisory exclusive lock (flock) on ``path`` (created, with its parents); yields
    whether it was acquired, and records this process as the holder in the file. Where the
    filesystem or platform cannot lock, it yields True without locking."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:  # e.g. ENOLCK on a filesystem without locks
            yield True
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text(), 0)
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_directory(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s lock (``DIR/.lock``, the directory created if missing) without
    waiting; :class:`LockHeld` naming the holder if another process has it."""
    lock = Path(directory) / LOCK_FILE
    with file_lock(lock, blocking=False) as got:
        if not got:
            raise LockHeld(
                f"{directory} is in use by {lock_holder(lock)} (it holds {lock}); wait for it to "
                f"finish or use another --out"
            )
        yield


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""PyYAML's safe loader, libyaml's C build where PyYAML has one (a sweep parses every run's
config.yaml after each run, and the pure-Python parser dominated that)."""


def load_yaml(path: str | Path) -> dict:
    """A YAML file of sections (a mapping); UsageError when it cannot be read or parsed."""
    p = Path(path)
    text = read_input_text(p, "config file")
    try:
        d = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as e:
        raise UsageError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting beyond the stack
        raise UsageError(f"config file {p} cannot be parsed: {type(e).__name__}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UsageError(f"config file {p} must hold a mapping of sections, got {show(d)}")
    return d
