"""Running tasks: claim what is due, execute it by task_type, record the outcome.

The same functions serve the AWS dispatcher/worker functions and the local run; only the
transport between claiming and executing differs (SQS there, an in-process queue here).
"""

from __future__ import annotations

import functools
import os
import random
import time
from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field

from atcore import db
from atcore.db import Connection
from atcore.executors import ExecutionError
from atcore.executors import execute as run_executor
from atcore.observability import add_metric, logger
from atcore.sql import query

_ERROR_MESSAGE_LIMIT = 1000


class ExecutionSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    lease_seconds: float = Field(default=120.0, gt=0)
    claim_batch_size: int = Field(default=500, ge=1, le=10_000)
    retry_base_seconds: float = Field(default=5.0, ge=0)
    retry_max_seconds: float = Field(default=3600.0, ge=0)


@functools.cache
def execution_settings() -> ExecutionSettings:
    names = {
        "lease_seconds": "AT_LEASE_SECONDS",
        "claim_batch_size": "AT_CLAIM_BATCH_SIZE",
        "retry_base_seconds": "AT_RETRY_BASE_SECONDS",
        "retry_max_seconds": "AT_RETRY_MAX_SECONDS",
    }
    return ExecutionSettings.model_validate({f: os.environ[v] for f, v in names.items() if os.environ.get(v)})


class ClaimedTask(BaseModel):
    """One attempt of a task, held under a lease by whoever claimed it."""

    id: int
    task_type: str
    payload: Any
    attempt: int
    max_attempts: int
    execute_at: datetime
    claimed_at: datetime


class Outcome(BaseModel):
    task_id: int
    attempt: int
    succeeded: bool
    error: str | None = None
    retry_in_seconds: float | None = None  # None: do not retry


_CLAIMED_COLUMNS = ("id", "task_type", "payload", "attempt", "max_attempts", "execute_at", "claimed_at")


def _claimed(row: list) -> ClaimedTask:
    return ClaimedTask.model_validate(dict(zip(_CLAIMED_COLUMNS, row, strict=True)))


def claim_due(conn: Connection, batch_size: int, lease_seconds: float) -> list[ClaimedTask]:
    rows = conn.run(query("claim_due_tasks"), batch_size=batch_size, lease_seconds=lease_seconds)
    tasks = sorted((_claimed(row) for row in rows), key=lambda task: task.execute_at)
    if tasks:
        add_metric("TasksClaimed", MetricUnit.Count, len(tasks))
        logger.info("Tasks claimed", extra={"task_ids": [task.id for task in tasks]})
    return tasks


def load_claimed(conn: Connection, task_id: int, attempt: int) -> ClaimedTask | None:
    """The attempt a queue message names, if it is still current (not cancelled, not re-claimed)."""
    rows = conn.run(query("load_claimed_task"), id=task_id, attempt=attempt)
    return _claimed(rows[0]) if rows else None


def backoff_seconds(attempt: int, settings: ExecutionSettings) -> float:
    """Exponential backoff with equal jitter: spread retries out, but never retry at once."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


def execute(task: ClaimedTask) -> Outcome:
    """Run one attempt; never raises. Retry decisions beyond `retryable` are the database's."""
    started = time.time()
    lateness = started - task.execute_at.timestamp()
    add_metric("LatenessSeconds", MetricUnit.Seconds, max(lateness, 0.0))
    try:
        run_executor(task.id, task.task_type, task.payload, task.attempt)
    except ExecutionError as exc:
        retry_in = backoff_seconds(task.attempt, execution_settings()) if exc.retryable else None
        outcome = Outcome(task_id=task.id, attempt=task.attempt, succeeded=False,
                          error=exc.message[:_ERROR_MESSAGE_LIMIT], retry_in_seconds=retry_in)
    except Exception as exc:  # noqa: BLE001 - an executor bug must not kill the worker; the task is retried
        logger.exception("Executor raised unexpectedly", extra={"task_id": task.id})
        outcome = Outcome(task_id=task.id, attempt=task.attempt, succeeded=False,
                          error=f"internal error in executor: {type(exc).__name__}",
                          retry_in_seconds=backoff_seconds(task.attempt, execution_settings()))
    else:
        outcome = Outcome(task_id=task.id, attempt=task.attempt, succeeded=True)
    logger.debug("Task executed", extra={"task_id": task.id, "attempt": task.attempt, "succeeded": outcome.succeeded,
                                         "duration_ms": round((time.time() - started) * 1000, 1),
                                         "lateness_ms": round(lateness * 1000, 1)})
    return outcome


def record_outcomes(conn: Connection, outcomes: list[Outcome]) -> dict[int, str]:
    """Write outcomes in one statement; returns {task_id: new status} for the rows that were
    still current. Missing ids were cancelled or re-claimed meanwhile and keep that state."""
    if not outcomes:
        return {}
    rows = conn.run(
        query("record_outcomes"),
        ids=[o.task_id for o in outcomes],
        attempts=[o.attempt for o in outcomes],
        succeeded=[o.succeeded for o in outcomes],
        errors=[o.error for o in outcomes],
        retry_in_seconds=[o.retry_in_seconds for o in outcomes],
    )
    statuses = {task_id: status for task_id, status, _attempts in rows}
    _count_outcomes(statuses.values())
    for outcome in outcomes:
        # "superseded": cancelled or re-claimed meanwhile; the newer state was kept.
        status = statuses.get(outcome.task_id, "superseded")
        extra = {"task_id": outcome.task_id, "attempt": outcome.attempt, "status": status}
        logger.info("Task outcome recorded", extra=extra | ({"error_message": outcome.error} if outcome.error else {}))
    return statuses


def _count_outcomes(statuses: Any) -> None:
    names = {"completed": "TasksCompleted", "pending": "TasksRetried", "failed": "TasksFailed"}
    counts: dict[str, int] = {}
    for status in statuses:
        counts[names[status]] = counts.get(names[status], 0) + 1
    for name, count in counts.items():
        add_metric(name, unit=MetricUnit.Count, value=count)


def release_claims(conn: Connection, tasks: list[ClaimedTask]) -> int:
    """Give back attempts that were claimed but not handed over; returns how many were released."""
    rows = conn.run(query("release_claims"), ids=[t.id for t in tasks], attempts=[t.attempt for t in tasks])
    logger.warning("Claims released", extra={"task_ids": [row[0] for row in rows]})
    return len(rows)


def recover_expired_leases(conn: Connection, batch_size: int = 1000) -> list[tuple[int, str]]:
    rows = conn.run(query("recover_expired_leases"), batch_size=batch_size)
    if rows:
        logger.warning("Expired leases recovered", extra={"tasks": [{"task_id": r[0], "status": r[1]} for r in rows]})
    return [(row[0], row[1]) for row in rows]


def seconds_until_next_wake(conn: Connection) -> float | None:
    value = conn.run(query("next_wake"))[0][0]
    return None if value is None else float(value)


def oldest_due_age_seconds(conn: Connection) -> float:
    return float(conn.run(query("oldest_due_age"))[0][0])


def run_attempt(task_id: int, attempt: int) -> str | None:
    """Execute the attempt a queue message names and record its outcome (the AWS worker's job).
    Returns the task's new status, or None when the attempt was no longer current."""
    with db.connection() as conn:
        task = load_claimed(conn, task_id, attempt)
    if task is None:
        logger.info("Attempt is no longer current; skipped", extra={"task_id": task_id, "attempt": attempt})
        return None
    outcome = execute(task)
    with db.connection() as conn:
        return record_outcomes(conn, [outcome]).get(task_id)
