"""One absolute deadline per attempt, as a time.monotonic() value, and what is left of it.

execute() fixes the attempt's deadline once: the caller's (say, what its lease or Lambda invocation
allows) or AT_HTTP_TIMEOUT_SECONDS from now, whichever comes first. Every executor then waits at
most until that instant, whatever it is doing (resolving, connecting, reading, calling AWS), instead
of granting each step a timeout of its own.
"""

from __future__ import annotations

import time

from .settings import http_timeout_seconds


def attempt_deadline(deadline: float | None) -> float:
    """The effective deadline: min(deadline, now + AT_HTTP_TIMEOUT_SECONDS)."""
    own = time.monotonic() + http_timeout_seconds()
    if deadline is None:
        return own
    if deadline != deadline:  # NaN would compare false with everything and never expire
        raise ValueError("deadline must be a time.monotonic() value, not NaN")
    return min(deadline, own)


def remaining(deadline: float) -> float:
    """Seconds left before `deadline`; raises TimeoutError once it has passed.

    Never returns 0: a socket timeout of 0 would mean non-blocking, not "no time left".
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def seconds_text(seconds: float) -> str:
    """A duration for a message: 123, 10, 2.5, 0.3. Two significant digits below 10: the budget is measured when the
    executor starts, a little after it was set, so 9.996 of a 10 s budget reads 10."""
    seconds = max(seconds, 0.0)
    return str(round(seconds)) if seconds >= 10 else f"{seconds:.2g}"
