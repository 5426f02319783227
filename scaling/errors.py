"""The one way bad input ends: a single line on stderr naming the problem, exit code 2.

Entry points wrap their ``main`` in :func:`exit_on_usage_error`; library code raises
:class:`UsageError` (a ``ValueError``) as soon as it sees bad input, before any compute.

The helpers below are the boundary where user-named paths are read or checked: they turn
the operating system's and the decoder's errors into a :class:`UsageError` naming the path
(:func:`read_input_text`, :func:`read_input_bytes`), and check output paths before anything
is computed (:func:`check_out_dir`, :func:`check_out_file`). :class:`ArgumentParser` makes
argparse's own errors (an unknown flag, a value that is not an int) one line as well.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input from the user: a missing file, an impossible config, a bad CSV."""


def exit_on_usage_error(main: F) -> F:
    """Run ``main``; turn a :class:`UsageError` into one stderr line and exit code 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {_one_line(str(e))}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapped  # type: ignore[return-value]


def _one_line(msg: str) -> str:
    return " ".join(line.strip() for line in msg.splitlines() if line.strip()) or "bad input"


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` naming the choice closest to a mistyped ``name``, or nothing
    when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`UsageError` (one line, exit 2 under
    :func:`exit_on_usage_error`) instead of the usage text and argparse's own exit. An unknown
    flag is answered with the closest known one, where one is close."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments: "):
            flags = [a.split("=", 1)[0] for a in message.split(": ", 1)[1].split() if a.startswith("--")]
            hint = did_you_mean(flags[0], self._option_string_actions) if flags else ""
        raise UsageError(f"{message}{hint} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- reading inputs


def _check_input_file(path: Path, what: str) -> None:
    if not os.path.lexists(path):
        raise UsageError(f"{what} not found: {path}")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise UsageError(f"{what} {path} is a broken symbolic link")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file")


def read_input_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of a user-named file; UsageError when it is missing, not a regular file or
    unreadable."""
    p = Path(path)
    _check_input_file(p, what)
    try:
        return p.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {p}: {e.strerror or e}") from None


def read_input_text(path: str | Path, what: str = "file", *, errors: str = "strict") -> str:
    """The UTF-8 text of a user-named file (see :func:`read_input_bytes`); with
    ``errors="strict"`` bytes that are not UTF-8 are a UsageError naming the offset."""
    data = read_input_bytes(path, what)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


# ----------------------------------------------------------------------------- checking outputs


def _existing_ancestor(p: Path) -> Path:
    a = p.absolute()
    while not os.path.lexists(a) and a != a.parent:
        a = a.parent
    return a


def _check_parent(p: Path, flag: str) -> None:
    anc = _existing_ancestor(p.parent)
    if not anc.is_dir():
        raise UsageError(f"{flag} {p}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {p}: directory {anc} is not writable")


def check_out_dir(path: str | Path | None, flag: str = "--out") -> Path:
    """An output directory, checked before any compute: not empty, not an existing file (or
    a link to nothing), and creatable (its nearest existing ancestor is a writable directory)."""
    if path is None or not str(path).strip():
        raise UsageError(f"{flag} must name a directory, got an empty path")
    p = Path(path)
    if os.path.lexists(p):
        if not p.is_dir():
            raise UsageError(f"{flag} {p} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {p}: directory is not writable")
        return p
    _check_parent(p, flag)
    return p


def check_out_file(path: str | Path | None, flag: str = "--out") -> Path:
    """An output file, checked before any compute: not empty, not a directory, and its
    directory exists or can be created."""
    if path is None or not str(path).strip():
        raise UsageError(f"{flag} must name a file, got an empty path")
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise UsageError(f"{flag} {p} is a directory; give a file name")
    if os.path.lexists(p) and not p.is_file():
        raise UsageError(f"{flag} {p} exists and is not a regular file")
    _check_parent(p, flag)
    return p
