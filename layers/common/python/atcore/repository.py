"""Data access for scheduled tasks: named SQL in, Task models out. No HTTP, no business rules."""

from __future__ import annotations

import json

from atcore.db import Connection
from atcore.models import CreateTaskRequest, Task, TaskPage, TaskStatus
from atcore.sql import query

# The dispatcher never sleeps longer than this; creates due sooner wake it (create_task SQL).
WAKE_HORIZON_SECONDS = 1.0

_TASK_COLUMNS = (
    "id", "execute_at", "task_type", "payload", "status", "attempts", "max_attempts",
    "created_at", "updated_at", "completed_at", "error_message",
)  # fmt: skip


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
    conn: Connection, *, status: TaskStatus | None, task_type: str | None, limit: int, offset: int
) -> TaskPage:
    rows = conn.run(
        query("list_tasks"),
        status=None if status is None else status.value,
        task_type=task_type,
        limit=limit,
        offset=offset,
    )
    total = rows[0][0]
    tasks = [_task(row[1:]) for row in rows if row[1] is not None]
    return TaskPage(tasks=tasks, total=total)


def ping(conn: Connection) -> None:
    conn.run(query("ping"))
