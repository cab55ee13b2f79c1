"""The API's business rules, one function per operation. Handlers call these; these call the
repository inside one pooled connection each."""

from __future__ import annotations

from atcore import db, repository
from atcore.errors import InvalidRequest, PayloadTooLarge, TaskNotCancellable, TaskNotFound
from atcore.models import CreateTaskRequest, ListFilters, Task, TaskListing, check_stored_payload_size, read_cursor
from atcore.observability import logger


def create_task(request: CreateTaskRequest) -> Task:
    try:
        check_stored_payload_size(request.payload)
    except ValueError as exc:
        raise PayloadTooLarge(str(exc)) from None
    with db.connection() as conn:
        task = repository.insert_task(conn, request)
    logger.info("Task created", extra={"task_id": task.id, "task_type": task.task_type, "execute_at": task.execute_at})
    return task


def get_task(task_id: int) -> Task:
    with db.connection() as conn:
        task = repository.find_task(conn, task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found")
    return task


def cancel_task(task_id: int) -> Task:
    with db.connection() as conn:
        task = repository.cancel_task(conn, task_id)
        if task is None:
            status = repository.task_status(conn, task_id)
    if task is not None:
        logger.info("Task cancelled", extra={"task_id": task_id})
        return task
    if status is None:
        raise TaskNotFound(f"task {task_id} not found")
    raise TaskNotCancellable(f"task {task_id} is already {status.value} and cannot be cancelled")


def list_tasks(filters: ListFilters, *, limit: int, offset: int, cursor: str | None, max_bytes: int) -> TaskListing:
    """One page of the tasks matching `filters`: from `offset` on, or after the page `cursor` ended;
    tasks past the first `max_bytes` of payload are left for the next page."""
    before_id = None
    if cursor is not None:
        if offset:
            raise InvalidRequest("cursor and offset cannot be combined: the cursor says where the page starts")
        try:
            before_id = read_cursor(cursor, filters)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    with db.connection() as conn:
        return repository.list_tasks(
            conn, filters=filters, before_id=before_id, limit=limit, offset=offset, max_bytes=max_bytes
        )


def check_health() -> None:
    """Raises DatabaseUnavailable when the database does not answer."""
    with db.connection() as conn:
        repository.ping(conn)
