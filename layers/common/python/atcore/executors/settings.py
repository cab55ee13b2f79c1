"""Executor settings from the environment, read on every use (cheap, and tests can change them)."""

from __future__ import annotations

import math
import os

_TRUE = frozenset({"1", "true", "yes", "on"})


def env_str(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def env_seconds(name: str, default: float, *, maximum: float) -> float:
    """A positive number of seconds; a malformed or out-of-range value falls back to the default."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and 0 < value <= maximum else default


def http_timeout_seconds() -> float:
    return env_seconds("AT_HTTP_TIMEOUT_SECONDS", 10.0, maximum=900.0)


def private_destinations_allowed() -> bool:
    return env_flag("AT_HTTP_ALLOW_PRIVATE")


def running_on_lambda() -> bool:
    """Lambda sets both in every execution environment (the runtime API listens on 127.0.0.1:9001)."""
    return env_str("AWS_LAMBDA_FUNCTION_NAME") is not None or env_str("AWS_LAMBDA_RUNTIME_API") is not None


def outbox_dir() -> str:
    return env_str("AT_OUTBOX_DIR") or os.path.join(".local", "outbox")
