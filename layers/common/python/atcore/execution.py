"""Running tasks: the rules (deadlines, backoff, batches) and what the engine says about them.

Two transports share these rules. The local engine claims and starts attempts in one statement,
only as many as it has idle workers. On AWS the dispatcher hands tasks to SQS without starting
them (`hand_over_due`) and the worker starts them (`run_batch`): a task waiting in the queue is
still pending, so waiting can never cost it an attempt, its lease or a second run. The SQL is in
atcore.execution_repository; the functions here add the log lines and metrics.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field

from atcore import db, executors
from atcore import execution_repository as repository
from atcore.db import Connection
from atcore.env import settings_reader
from atcore.errors import DatabaseUnavailable
from atcore.execution_repository import AttemptRef, ClaimedTask, Outcome
from atcore.executors import ExecutionError
from atcore.executors.settings import http_timeout_seconds
from atcore.idempotency import idempotency_settings
from atcore.observability import add_metric, logger

__all__ = ["AttemptRef", "ClaimedTask", "ExecutionSettings", "Outcome"]

_ERROR_MESSAGE_LIMIT = 1000
# An attempt ends before its lease does (so recovery never races a live attempt), and a worker
# keeps this much of its invocation for recording outcomes.
_LEASE_SHARE_FOR_EXECUTION = 0.8
RECORDING_MARGIN_SECONDS = 3.0
# Housekeeping, once a second: expired leases and hand-offs, and retention (a batch a second keeps
# up with 86 million finished tasks a day).
HOUSEKEEPING_BATCH_SIZE = 1000


class ExecutionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    lease_seconds: float = Field(default=120.0, gt=0, alias="AT_LEASE_SECONDS")
    claim_batch_size: int = Field(default=500, ge=1, le=10_000, alias="AT_CLAIM_BATCH_SIZE")
    retry_base_seconds: float = Field(default=5.0, ge=0, alias="AT_RETRY_BASE_SECONDS")
    retry_max_seconds: float = Field(default=3600.0, ge=0, alias="AT_RETRY_MAX_SECONDS")
    # AWS only: how long a task handed to SQS stays reserved before another dispatcher may send
    # it again (its message went to the dead-letter queue or was lost), and the worker capacity
    # the dispatcher's backpressure is sized by (template.yaml: ScalingConfig and BatchSize).
    handoff_seconds: float = Field(default=60.0, gt=0, alias="AT_HANDOFF_SECONDS")
    worker_max_concurrency: int = Field(default=10, ge=1, alias="AT_WORKER_MAX_CONCURRENCY")
    worker_batch_size: int = Field(default=5, ge=1, alias="AT_WORKER_BATCH_SIZE")
    # Finished tasks are deleted this many days after their last change; 0 keeps everything.
    retention_days: int = Field(default=30, ge=0, alias="AT_RETENTION_DAYS")
    # The AWS dispatcher's loop per scheduled invocation (the next one takes over after it).
    dispatch_run_seconds: float = Field(default=60.0, gt=0, alias="AT_DISPATCH_RUN_SECONDS")
    task_queue_url: str | None = Field(default=None, alias="TASK_QUEUE_URL")

    @property
    def max_queued(self) -> int:
        """Tasks in the queue at most: every worker busy with one batch and one more waiting for
        each. More would only wait in SQS, where a cancel or reschedule can still beat them but
        nothing else is gained; the rest wait in the table, oldest due first."""
        return 2 * self.worker_max_concurrency * self.worker_batch_size


execution_settings = settings_reader(ExecutionSettings)


def claim_due(conn: Connection, batch_size: int, lease_seconds: float) -> list[ClaimedTask]:
    """Claim due tasks and start their attempts (the local engine: its workers are idle)."""
    tasks = repository.claim_due(conn, batch_size, lease_seconds)
    _announce("TasksClaimed", "Tasks claimed", [task.id for task in tasks])
    return tasks


def hand_over_due(conn: Connection, batch_size: int, handoff_seconds: float) -> list[AttemptRef]:
    """Reserve due tasks for the queue, oldest due first, without starting them."""
    refs = repository.hand_over_due(conn, batch_size, handoff_seconds)
    _announce("TasksHandedOver", "Tasks handed over", [ref.id for ref in refs])
    return refs


def _announce(metric: str, message: str, task_ids: list[int]) -> None:
    if task_ids:
        add_metric(metric, MetricUnit.Count, len(task_ids))
        logger.info(message, extra={"task_ids": task_ids})


def release_handoffs(conn: Connection, refs: Sequence[AttemptRef]) -> int:
    """Give back hand-offs that never reached a worker; returns how many were released."""
    released = repository.release_handoffs(conn, refs)
    if released:
        logger.warning("Hand-offs released", extra={"task_ids": released})
    return len(released)


def record_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> dict[int, str]:
    """Write outcomes in one statement; returns {task_id: new status} for the rows that were
    still current. Missing ids were cancelled or re-claimed meanwhile and keep that state."""
    statuses = repository.record_outcomes(conn, outcomes)
    _count_outcomes(statuses.values())
    # One line per batch, not per task: at thousands of tasks a second a line each cost a fifth of
    # the worker's CPU. Each failure has its own WARNING line from the executor, with the details.
    # "superseded": cancelled or re-claimed meanwhile; the newer state was kept.
    by_status: dict[str, list[int]] = {}
    for outcome in outcomes:
        add_metric("LatenessSeconds", MetricUnit.Seconds, outcome.lateness_seconds)
        by_status.setdefault(statuses.get(outcome.task_id, "superseded"), []).append(outcome.task_id)
    if by_status:
        logger.info("Task outcomes recorded", extra={"task_ids_by_status": by_status})
    return statuses


def backoff_seconds(attempt: int, settings: ExecutionSettings) -> float:
    """Exponential backoff with equal jitter: spread retries out, but never retry at once."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


def attempt_seconds(settings: ExecutionSettings) -> float:
    """The longest one attempt may run: its executor's timeout, and always less than its lease."""
    return min(http_timeout_seconds(), settings.lease_seconds * _LEASE_SHARE_FOR_EXECUTION)


def execute(task: ClaimedTask, deadline: float | None = None) -> Outcome:
    """Run one attempt by `deadline` (time.monotonic(); at most attempt_seconds from now); never raises.
    Retry decisions beyond `retryable` are the database's."""
    settings = execution_settings()
    started = time.time()
    budget_end = time.monotonic() + attempt_seconds(settings)
    deadline = budget_end if deadline is None else min(deadline, budget_end)
    lateness = started - task.execute_at.timestamp()
    try:
        executors.execute(task.id, task.task_type, task.payload, task.attempt, deadline=deadline)
    except ExecutionError as exc:
        retry_in = backoff_seconds(task.attempt, settings) if exc.retryable else None
        outcome = Outcome(
            task_id=task.id,
            attempt=task.attempt,
            succeeded=False,
            error=exc.message[:_ERROR_MESSAGE_LIMIT],
            retry_in_seconds=retry_in,
        )
    except Exception as exc:  # noqa: BLE001 - an executor bug must not kill the worker; the task is retried
        logger.exception("Executor raised unexpectedly", extra={"task_id": task.id})
        outcome = Outcome(
            task_id=task.id,
            attempt=task.attempt,
            succeeded=False,
            error=f"internal error in executor: {type(exc).__name__}",
            retry_in_seconds=backoff_seconds(task.attempt, settings),
        )
    else:
        outcome = Outcome(task_id=task.id, attempt=task.attempt, succeeded=True)
    outcome.lateness_seconds = max(lateness, 0.0)
    logger.debug(
        "Task executed",
        extra={
            "task_id": task.id,
            "attempt": task.attempt,
            "succeeded": outcome.succeeded,
            "duration_ms": round((time.time() - started) * 1000, 1),
            "lateness_ms": round(lateness * 1000, 1),
        },
    )
    return outcome


def _count_outcomes(statuses: Any) -> None:
    names = {"completed": "TasksCompleted", "pending": "TasksRetried", "failed": "TasksFailed"}
    counts: dict[str, int] = {}
    for status in statuses:
        counts[names[status]] = counts.get(names[status], 0) + 1
    for name, count in counts.items():
        add_metric(name, unit=MetricUnit.Count, value=count)


def recover_expired_leases(conn: Connection, batch_size: int = HOUSEKEEPING_BATCH_SIZE) -> list[tuple[int, str]]:
    recovered = repository.recover_expired_leases(conn, batch_size)
    if recovered:
        logger.warning("Expired leases recovered", extra={"tasks": [{"task_id": i, "status": s} for i, s in recovered]})
    return recovered


def recover_expired_handoffs(conn: Connection, batch_size: int = HOUSEKEEPING_BATCH_SIZE) -> list[int]:
    recovered = repository.recover_expired_handoffs(conn, batch_size)
    if recovered:
        logger.warning("Expired hand-offs recovered", extra={"task_ids": recovered})
    return recovered


def delete_expired_tasks(conn: Connection, retention_days: int, batch_size: int = HOUSEKEEPING_BATCH_SIZE) -> int:
    """Delete up to batch_size finished tasks past their retention (0 days keeps everything)."""
    if retention_days <= 0:
        return 0
    deleted = repository.delete_expired_tasks(conn, retention_days, batch_size)
    if deleted:
        add_metric("TasksDeleted", MetricUnit.Count, deleted)
        logger.info("Finished tasks deleted (retention)", extra={"count": deleted, "retention_days": retention_days})
    return deleted


def housekeeping(conn: Connection, settings: ExecutionSettings) -> None:
    """What a dispatcher does once a second besides claiming: expired leases and hand-offs,
    retention, and Idempotency-Keys past their TTL."""
    recover_expired_leases(conn)
    recover_expired_handoffs(conn)
    delete_expired_tasks(conn, settings.retention_days)
    ttl_hours = idempotency_settings().ttl_hours
    if deleted := repository.delete_expired_idempotency_keys(conn, ttl_hours, HOUSEKEEPING_BATCH_SIZE):
        logger.info("Expired Idempotency-Keys deleted", extra={"count": deleted, "ttl_hours": ttl_hours})


# Worker threads live as long as the execution environment: keep-alive callback connections are
# kept per thread, so a warm worker reuses them across invocations.
@functools.cache
def _batch_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="at-attempt")


def run_batch(refs: Sequence[AttemptRef], seconds_left: Callable[[], float]) -> list[AttemptRef]:
    """The AWS worker's job: start the attempts a batch of messages names (one statement), run
    them concurrently, each by its own deadline, and record their outcomes (one statement).

    `seconds_left` is the invocation's remaining time. Returns the refs whose outcome could not
    be recorded (the caller reports them as failed messages); skipped refs are done.
    """
    settings = execution_settings()
    needed = attempt_seconds(settings) + RECORDING_MARGIN_SECONDS
    if seconds_left() < needed:
        # Not even one attempt fits: back to the dispatcher at once, not to SQS's visibility timeout.
        with db.connection() as conn:
            release_handoffs(conn, refs)
        logger.warning("Too little time left to start attempts", extra={"seconds_left": round(seconds_left(), 1)})
        return []
    with db.connection() as conn:
        tasks = repository.start_attempts(conn, refs, settings.lease_seconds)
    if skipped := sorted({r.id for r in refs} - {t.id for t in tasks}):
        logger.info("Attempts no longer current; skipped", extra={"task_ids": skipped})
    if not tasks:
        return []
    deadline = time.monotonic() + seconds_left() - RECORDING_MARGIN_SECONDS
    outcomes = list(_batch_pool().map(lambda task: execute(task, deadline), tasks))
    if _record_before(outcomes, deadline=time.monotonic() + seconds_left() - 1.0):
        return []
    started = {(t.id, t.attempt) for t in tasks}
    return [ref for ref in refs if (ref.id, ref.attempt) in started]


def _record_before(outcomes: list[Outcome], deadline: float) -> bool:
    """Record outcomes, retrying a database that is briefly away until `deadline` (monotonic)."""
    while True:
        try:
            with db.connection() as conn:
                record_outcomes(conn, outcomes)
            return True
        except DatabaseUnavailable:
            if time.monotonic() + 0.5 >= deadline:
                logger.error("Outcomes could not be recorded", extra={"task_ids": [o.task_id for o in outcomes]})
                return False
            time.sleep(0.5)
