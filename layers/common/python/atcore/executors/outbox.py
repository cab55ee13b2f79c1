"""The local outbox: messages that would go to SES/SNS/SQS, appended to <AT_OUTBOX_DIR>/<channel>.jsonl.

Like Django's console e-mail backend, it lets `make run` exercise every task type without AWS.
One os.write of one whole line to an O_APPEND descriptor: concurrent writers (threads or
processes) never interleave within a line on a local file system.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime

from ..observability import logger
from .errors import ExecutionError
from .settings import executor_settings


def outbox_path(channel: str) -> str:
    return os.path.join(executor_settings().outbox_dir, f"{channel}.jsonl")


def deliver(channel: str, task_id: int, attempt: int, message: Mapping[str, object]) -> None:
    record = {"task_id": task_id, "attempt": attempt, "timestamp": _utc_now(), "message": message}
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    path = outbox_path(channel)
    try:
        written = _append(path, line)
    except OSError as exc:
        raise ExecutionError(
            f"outbox write failed: {exc.strerror or type(exc).__name__}", detail=f"{path}: {exc}"
        ) from None
    if written != len(line):
        raise ExecutionError("outbox write was cut short (disk full?)")
    logger.info("delivered to outbox", extra={"channel": channel, "task_id": task_id, "attempt": attempt})


def _append(path: str, line: bytes) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # 0o600: messages may hold personal data (addresses, phone numbers).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        return os.write(fd, line)
    finally:
        os.close(fd)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
