"""Data access for scheduled tasks: named SQL in, Task models out. No HTTP, no business rules."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from atcore.db import Connection
from atcore.models import (
    CANCELLABLE_STATUSES,
    CHANGEABLE_STATUSES,
    MAX_ATTEMPTS_LISTED,
    RETRYABLE_STATUSES,
    TASK_LIST,
    AttemptList,
    CreateTaskRequest,
    ListFilters,
    PatchTaskRequest,
    Task,
    TaskAttempt,
    TaskListing,
    TaskStats,
    TaskStatus,
)
from atcore.sql import query


def _task(row: dict[str, Any]) -> Task:
    """A task from its row, by column name: the other columns (lease, hand-off) are the engine's."""
    return Task.model_validate(row)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def insert_task(conn: Connection, request: CreateTaskRequest, created_by: str | None) -> Task:
    rows = conn.run_dicts(
        query("create_task"),
        execute_at=request.execute_at,
        task_type=request.task_type,
        payload=_json(request.payload),
        max_attempts=request.max_attempts,
        created_by=created_by,
    )
    return _task(rows[0])


def insert_tasks(conn: Connection, requests: list[CreateTaskRequest], created_by: str | None) -> list[Task]:
    """All of them in one statement, in the request's order."""
    rows = conn.run_dicts(
        query("create_tasks"),
        execute_ats=[r.execute_at for r in requests],
        task_types=[r.task_type for r in requests],
        payloads=[_json(r.payload) for r in requests],
        max_attempts=[r.max_attempts for r in requests],
        created_by=created_by,
    )
    return sorted((_task(row) for row in rows), key=lambda task: task.id)


def update_task(conn: Connection, task_id: int, change: PatchTaskRequest) -> Task | None:
    """The changed task, or None when it does not exist, is not pending, or max_attempts is too low."""
    given = change.model_fields_set
    rows = conn.run_dicts(
        query("update_task"),
        id=task_id,
        execute_at=change.execute_at if "execute_at" in given else None,
        payload=_json(change.payload) if "payload" in given else None,
        max_attempts=change.max_attempts if "max_attempts" in given else None,
        changeable=sorted(CHANGEABLE_STATUSES),
    )
    return _task(rows[0]) if rows else None


def retry_task(conn: Connection, task_id: int, execute_at: datetime | None) -> Task | None:
    """The task pending again, or None when it does not exist or is not failed or cancelled."""
    rows = conn.run_dicts(query("retry_task"), id=task_id, execute_at=execute_at, retryable=sorted(RETRYABLE_STATUSES))
    return _task(rows[0]) if rows else None


def find_task(conn: Connection, task_id: int) -> Task | None:
    rows = conn.run_dicts(query("get_task"), id=task_id)
    return _task(rows[0]) if rows else None


def cancel_task(conn: Connection, task_id: int) -> Task | None:
    """The cancelled task, or None when it does not exist or can no longer be cancelled."""
    rows = conn.run_dicts(query("cancel_task"), id=task_id, cancellable=sorted(CANCELLABLE_STATUSES))
    return _task(rows[0]) if rows else None


def task_state(conn: Connection, task_id: int) -> tuple[TaskStatus, int] | None:
    """(status, attempts made), or None when there is no such task."""
    rows = conn.run(query("task_state"), id=task_id)
    return (TaskStatus(rows[0][0]), rows[0][1]) if rows else None


def list_attempts(conn: Connection, task_id: int) -> AttemptList | None:
    """The task's attempt history, oldest first; None when there is no such task."""
    rows = conn.run_dicts(query("list_attempts"), id=task_id, limit=MAX_ATTEMPTS_LISTED)
    if not rows[0]["task_exists"]:
        return None
    attempts = [TaskAttempt.model_validate(row) for row in rows if row["number"] is not None]
    return AttemptList(attempts=attempts, total=rows[0]["total"])


def task_stats(conn: Connection) -> TaskStats:
    row = conn.run_dicts(query("task_stats"))[0]
    counts = {status.value: 0 for status in TaskStatus} | {k: int(v) for k, v in json.loads(row["counts"]).items()}
    return TaskStats(
        counts=counts,
        total=sum(counts.values()),
        oldest_due_age_seconds=row["oldest_due_age_seconds"],
        next_execute_at=row["next_execute_at"],
    )


# A due-time page reads up to limit + offset tasks of every day in its range (see list_tasks in
# sql/tasks.sql); past this offset one scan by id costs less. Cursor pages have offset 0.
BY_DUE_DAY_MAX_OFFSET = 1000
# ...and when status and task_type match at most this many tasks in all, so does a due-time page:
# reading those few by id costs less than reading every task of each day in the range.
SCAN_BY_ID_MAX = 5000


def list_tasks(
    conn: Connection, *, filters: ListFilters, before_id: int | None, limit: int, offset: int, max_bytes: int
) -> TaskListing:
    """Up to `limit` tasks matching `filters`, newest first, from `offset` on or below `before_id`.
    Rows after the first `max_bytes` of payload text are not read; they are left for a later page."""
    rows = conn.run_dicts(
        query("list_tasks"),
        status=None if filters.status is None else filters.status.value,
        task_type=filters.task_type,
        execute_after=filters.execute_after,
        execute_before=filters.execute_before,
        by_due_day=bool(filters.execute_after or filters.execute_before) and offset <= BY_DUE_DAY_MAX_OFFSET,
        scan_by_id_max=SCAN_BY_ID_MAX,
        before_id=before_id,
        limit=limit + 1,  # one more than shown: whether another page follows
        offset=offset,
        max_bytes=max_bytes,
    )
    total = rows[0]["total"]
    found = [row for row in rows if row["page_id"] is not None]  # the page's ids, newest first
    read = [row for row in found if row["id"] is not None]  # those read whole
    tasks = [_task(row) for row in read[:limit]]
    return TaskListing(tasks=tasks, total=total, more=len(found) > len(tasks), filters=filters)


def ping(conn: Connection) -> None:
    conn.run(query("ping"))


# --- Idempotency-Key (sql/idempotency.sql) ------------------------------------------------------


class StoredKey(BaseModel):
    fingerprint: str
    status_code: int
    response: str  # the tasks as created, a JSON array of Task


def find_idempotency_key(conn: Connection, scope: str, key: str, ttl_hours: int) -> StoredKey | None:
    rows = conn.run_dicts(query("find_idempotency_key"), scope=scope, key=key, ttl_hours=ttl_hours)
    return StoredKey.model_validate(rows[0]) if rows else None


def claim_idempotency_key(
    conn: Connection, scope: str, key: str, ttl_hours: int, *, fingerprint: str, status_code: int, tasks: list[Task]
) -> bool:
    """Store the key with its answer, in the caller's transaction; False when another request holds it."""
    conn.run(query("forget_expired_idempotency_key"), scope=scope, key=key, ttl_hours=ttl_hours)
    rows = conn.run(
        query("claim_idempotency_key"),
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        status_code=status_code,
        response=TASK_LIST.dump_json(tasks).decode(),
        task_ids=[task.id for task in tasks],
    )
    return bool(rows)
