"""Data access for scheduled tasks: named SQL in, Task models out. No HTTP, no business rules."""

from __future__ import annotations

import json

from atcore.db import Connection
from atcore.models import CreateTaskRequest, ListFilters, Task, TaskListing, TaskStatus
from atcore.sql import query

# The dispatcher never sleeps longer than this; creates due sooner wake it (create_task SQL).
WAKE_HORIZON_SECONDS = 1.0

_TASK_COLUMNS = (
    "id", "execute_at", "task_type", "payload", "status", "attempts", "max_attempts",
    "created_at", "updated_at", "completed_at", "error_message",
)  # fmt: skip


_PAYLOAD = 1 + _TASK_COLUMNS.index("payload")  # in a list_tasks row, after the total


def _task(row: list) -> Task:
    return Task.model_validate(dict(zip(_TASK_COLUMNS, row, strict=True)))


def insert_task(conn: Connection, request: CreateTaskRequest) -> Task:
    rows = conn.run(
        query("create_task"),
        execute_at=request.execute_at,
        task_type=request.task_type,
        payload=json.dumps(request.payload, ensure_ascii=False, allow_nan=False),
        max_attempts=request.max_attempts,
        wake_horizon_seconds=WAKE_HORIZON_SECONDS,
    )
    return _task(rows[0])


def find_task(conn: Connection, task_id: int) -> Task | None:
    rows = conn.run(query("get_task"), id=task_id)
    return _task(rows[0]) if rows else None


def cancel_task(conn: Connection, task_id: int) -> Task | None:
    """The cancelled task, or None when it does not exist or can no longer be cancelled."""
    rows = conn.run(query("cancel_task"), id=task_id)
    return _task(rows[0]) if rows else None


def task_status(conn: Connection, task_id: int) -> TaskStatus | None:
    rows = conn.run(query("task_status"), id=task_id)
    return TaskStatus(rows[0][0]) if rows else None


def list_tasks(
    conn: Connection, *, filters: ListFilters, before_id: int | None, limit: int, offset: int, max_bytes: int
) -> TaskListing:
    """Up to `limit` tasks matching `filters`, newest first, from `offset` on or below `before_id`.
    Rows after the first `max_bytes` of payload text are not read; they are left for a later page."""
    rows = conn.run(
        query("list_tasks"),
        status=None if filters.status is None else filters.status.value,
        task_type=filters.task_type,
        before_id=before_id,
        limit=limit + 1,  # one more than shown: whether another page follows
        offset=offset,
        max_bytes=max_bytes,
    )
    total = rows[0][0]
    found = [row for row in rows if row[1] is not None]  # the page's ids, newest first
    read = [row for row in found if row[_PAYLOAD] is not None]  # those read whole (payload is never NULL)
    tasks = [_task(row[1:]) for row in read[:limit]]
    return TaskListing(tasks=tasks, total=total, more=len(found) > len(tasks), filters=filters)


def ping(conn: Connection) -> None:
    conn.run(query("ping"))
