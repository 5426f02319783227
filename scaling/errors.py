"""The one way bad input ends: a single line on stderr naming the problem, exit code 2.

Entry points wrap their ``main`` in :func:`exit_on_usage_error`; library code raises
:class:`UsageError` (a ``ValueError``) as soon as it sees bad input, before any compute.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

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
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapped  # type: ignore[return-value]
