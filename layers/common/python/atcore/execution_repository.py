"""Data access for execution: named SQL in (execution.sql), models out. No logging, no rules.

atcore.execution decides (deadlines, backoff, batches) and says what happened; this module only
runs the statements the dispatcher, the workers and the local engine need.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from atcore.db import Connection
from atcore.sql import query


class AttemptRef(BaseModel):
    """An attempt a queue message names: task `id`, attempt number `attempt`."""

    model_config = ConfigDict(frozen=True)

    id: int
    attempt: int


class ClaimedTask(BaseModel):
    """One started attempt of a task, held under a lease by whoever started it."""

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
    lateness_seconds: float = 0.0  # started minus execute_at, for the metric


def _claimed(rows: list[dict[str, Any]]) -> list[ClaimedTask]:
    return [ClaimedTask.model_validate(row) for row in rows]


def claim_due(conn: Connection, batch_size: int, lease_seconds: float) -> list[ClaimedTask]:
    """Claim due tasks and start their attempts, oldest due first."""
    rows = conn.run_dicts(query("claim_due_tasks"), batch_size=batch_size, lease_seconds=lease_seconds)
    return sorted(_claimed(rows), key=lambda task: task.execute_at)


def hand_over_due(conn: Connection, batch_size: int, handoff_seconds: float) -> list[AttemptRef]:
    """Reserve due tasks for the queue without starting them, oldest due first."""
    rows = conn.run_dicts(query("hand_over_due_tasks"), batch_size=batch_size, handoff_seconds=handoff_seconds)
    return [AttemptRef(id=row["id"], attempt=row["attempt"]) for row in sorted(rows, key=lambda r: r["execute_at"])]


def count_queued(conn: Connection) -> int:
    return int(conn.run(query("count_queued"))[0][0])


def start_attempts(conn: Connection, refs: Sequence[AttemptRef], lease_seconds: float) -> list[ClaimedTask]:
    """Start the attempts queue messages name; those no longer current are left out."""
    if not refs:
        return []
    rows = conn.run_dicts(
        query("start_attempts"),
        ids=[r.id for r in refs],
        attempts=[r.attempt for r in refs],
        lease_seconds=lease_seconds,
    )
    return _claimed(rows)


def release_handoffs(conn: Connection, refs: Sequence[AttemptRef]) -> list[int]:
    """Give back hand-offs that never reached a worker; returns the task ids released."""
    if not refs:
        return []
    rows = conn.run(query("release_handoffs"), ids=[r.id for r in refs], attempts=[r.attempt for r in refs])
    return [row[0] for row in rows]


def record_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> dict[int, str]:
    """Write outcomes in one statement; returns {task_id: new status} for the tasks still at that
    attempt (the others were cancelled or re-claimed meanwhile and keep that state)."""
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
    return {task_id: status for task_id, status, _attempts in rows}


def recover_expired_leases(conn: Connection, batch_size: int) -> list[tuple[int, str]]:
    """Tasks whose worker died: retried, or failed when spent; returns (task id, new status)."""
    return [(row[0], row[1]) for row in conn.run(query("recover_expired_leases"), batch_size=batch_size)]


def recover_expired_handoffs(conn: Connection, batch_size: int) -> list[int]:
    return [row[0] for row in conn.run(query("recover_expired_handoffs"), batch_size=batch_size)]


def delete_expired_tasks(conn: Connection, retention_days: int, batch_size: int) -> int:
    return len(conn.run(query("delete_expired_tasks"), retention_days=retention_days, batch_size=batch_size))


def delete_expired_idempotency_keys(conn: Connection, ttl_hours: int, batch_size: int) -> int:
    return len(conn.run(query("delete_expired_idempotency_keys"), ttl_hours=ttl_hours, batch_size=batch_size))


def seconds_until_next_wake(conn: Connection) -> float:
    """Until the next task is due or a lease or hand-off expires, at most the wake horizon."""
    return float(conn.run(query("next_wake"))[0][0])


def oldest_due_age_seconds(conn: Connection) -> float:
    return float(conn.run(query("oldest_due_age"))[0][0])
