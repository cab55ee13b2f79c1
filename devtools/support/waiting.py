"""Waiting for an outcome in tests and harnesses, instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for[Value](condition: Callable[[], Value], timeout: float = 10.0, interval: float = 0.02) -> Value:
    """condition()'s first truthy value; AssertionError when none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
