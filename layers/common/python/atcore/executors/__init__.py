"""The executor registry: runs one task by its task_type.

    execute(task_id, task_type, payload, attempt, *, deadline=None)
        returns on success, raises ExecutionError on failure

`deadline` is an absolute time.monotonic() value; the attempt ends by min(deadline, now +
AT_HTTP_TIMEOUT_SECONDS) whatever it is doing (see deadlines.py). Each task type has a module with a
pydantic model of its payload and a `run(task_id, payload, attempt, *, deadline)` that returns fields
for the log line. Importing this package is cheap: an executor module is imported
on its task type's first use, and boto3 only when a task is delivered through AWS (see aws.py), so
API functions that only ask known_task_types() don't pay for either at cold start.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from typing import Protocol

from ..observability import logger
from .deadlines import attempt_deadline
from .errors import ExecutionError, truncate

__all__ = ["ExecutionError", "execute", "known_task_types"]


class Executor(Protocol):
    def __call__(self, task_id: int, payload: object, attempt: int, *, deadline: float) -> Mapping[str, object]: ...


# task_type -> the module (in this package) whose run() executes it.
EXECUTORS: dict[str, str] = {
    "http_callback": "http_callback",
    "send_email": "email",
    "email": "email",  # the original service's name
    "send_sms": "sms",
    "sqs_message": "sqs",
}


def known_task_types() -> frozenset[str]:
    return frozenset(EXECUTORS)


def execute(task_id: int, task_type: str, payload: object, attempt: int, *, deadline: float | None = None) -> None:
    """Run one task by its task_type; return on success, raise ExecutionError on failure.

    `deadline` (time.monotonic(), optional): when the attempt must be over. The attempt's own deadline
    is min(deadline, now + AT_HTTP_TIMEOUT_SECONDS); an attempt whose deadline has already passed is
    not started (a retryable failure).
    """
    log_fields: dict[str, object] = {"task_id": task_id, "task_type": task_type, "attempt": attempt}
    started = time.perf_counter()
    try:
        run = _executor_for(task_type)  # first: a module's first import is not the attempt's time
        ends = attempt_deadline(deadline)
        if ends <= time.monotonic():
            raise ExecutionError("attempt not started: its deadline had already passed")
        result = run(task_id, payload, attempt, deadline=ends)
    except ExecutionError as error:
        log_fields.update(
            outcome="retryable_failure" if error.retryable else "failed",
            error=error.message,
            duration_ms=_elapsed_ms(started),
        )
        if error.detail:  # what the task's owner is not shown: addresses, the AWS message, a response's start
            log_fields["error_detail"] = error.detail
        if (http_status := getattr(error, "http_status", None)) is not None:
            log_fields["http_status"] = http_status
        logger.warning("task execution failed", extra=log_fields)
        raise
    log_fields.update(result, outcome="succeeded", duration_ms=_elapsed_ms(started))
    # DEBUG: at thousands of tasks a second an INFO line per success costs ~25% of a callback's CPU,
    # and the worker records every outcome anyway. Failures are always logged (WARNING).
    logger.debug("task executed", extra=log_fields)


def _executor_for(task_type: str) -> Executor:
    module = EXECUTORS.get(task_type)
    if module is None:
        name, known = truncate(str(task_type), 60), ", ".join(sorted(EXECUTORS))
        raise ExecutionError(f"unknown task_type {name!r}; known types: {known}", retryable=False)
    run: Executor = importlib.import_module(f"{__name__}.{module}").run
    return run


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
