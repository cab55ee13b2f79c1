"""Data access for scheduled tasks: named SQL in, Task models out. No HTTP, no business rules."""

from __future__ import annotations

import json
from typing import Any

from atcore.db import Connection
from atcore.models import CANCELLABLE_STATUSES, CreateTaskRequest, ListFilters, Task, TaskListing, TaskStatus
from atcore.sql import query


def _task(row: dict[str, Any]) -> Task:
    """A task from its row, by column name: the other columns (lease, hand-off) are the engine's."""
    return Task.model_validate(row)


def insert_task(conn: Connection, request: CreateTaskRequest) -> Task:
    rows = conn.run_dicts(
        query("create_task"),
        execute_at=request.execute_at,
        task_type=request.task_type,
        payload=json.dumps(request.payload, ensure_ascii=False, allow_nan=False),
        max_attempts=request.max_attempts,
    )
    return _task(rows[0])


def find_task(conn: Connection, task_id: int) -> Task | None:
    rows = conn.run_dicts(query("get_task"), id=task_id)
    return _task(rows[0]) if rows else None


def cancel_task(conn: Connection, task_id: int) -> Task | None:
    """The cancelled task, or None when it does not exist or can no longer be cancelled."""
    rows = conn.run_dicts(query("cancel_task"), id=task_id, cancellable=sorted(CANCELLABLE_STATUSES))
    return _task(rows[0]) if rows else None


def task_status(conn: Connection, task_id: int) -> TaskStatus | None:
    rows = conn.run(query("task_status"), id=task_id)
    return TaskStatus(rows[0][0]) if rows else None


def list_tasks(
    conn: Connection, *, filters: ListFilters, before_id: int | None, limit: int, offset: int, max_bytes: int
) -> TaskListing:
    """Up to `limit` tasks matching `filters`, newest first, from `offset` on or below `before_id`.
    Rows after the first `max_bytes` of payload text are not read; they are left for a later page."""
    rows = conn.run_dicts(
        query("list_tasks"),
        status=None if filters.status is None else filters.status.value,
        task_type=filters.task_type,
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
