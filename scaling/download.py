"""Resumable HTTP downloads that are never half-used.

:func:`download` fetches a URL into ``DEST.part``; a dropped connection is resumed from the
bytes already there with an HTTP ``Range`` request (a server that ignores ``Range`` and answers
200 makes it start over), also by a later call after the process was killed. Only a complete
body (its ``Content-Length`` reached, or the end of a chunked body) whose sha256 matches the
expected one is renamed to ``DEST``; a body with another hash is deleted. So ``DEST`` exists only
whole and checked, and whatever is under ``DEST.part`` is never read as data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from scaling.errors import UsageError
from scaling.io import fsync_dir

CHUNK = 1 << 16
USER_AGENT = "scaling-prepare/1 (+python urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(UsageError):
    """A download that failed for good: an HTTP error, too many dropped connections, a wrong
    checksum."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_path(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` through ``dest.part`` (resumed where a previous try stopped),
    check ``sha256`` when given, then rename into place. ``on_bytes(n)`` is told of every ``n``
    bytes received (a progress bar's update). Raises :class:`DownloadError`."""
    dest = Path(dest)
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.2 * 2**attempt, 5.0))
        try:
            if _fetch_into(url, part, timeout, on_bytes):
                break
            last = "connection closed before the end of the body"
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last = str(getattr(e, "reason", None) or e) or type(e).__name__
    else:
        have = part.stat().st_size if part.exists() else 0
        kept = f"; {have} bytes kept in {part}, run again to resume" if have else ""
        raise DownloadError(f"cannot download {url} after {retries + 1} tries ({last}){kept}")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _fetch_into(url: str, part: Path, timeout: float, on_bytes) -> bool:
    """One request appending to ``part``; True when the body is complete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after what we have: complete if the total says so
            m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have:
                return True
            part.unlink()  # the part is longer than the file: start over
            return False
        raise
    with resp:
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                part.unlink()  # a range we did not ask for: start over
                return False
            mode, total = "ab", (None if m.group(3) == "*" else int(m.group(3)))
        else:  # 200: the whole body (the server ignores Range)
            mode, have = "wb", 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    if on_bytes is not None:
                        on_bytes(len(e.partial))
                    return False
                if not block:
                    break
                f.write(block)
                have += len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
            f.flush()
            os.fsync(f.fileno())
    return total is None or have >= total
