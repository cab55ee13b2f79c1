"""The API's business rules, one function per operation. Handlers call these; these call the
repository inside one pooled connection each."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from atcore import db, repository
from atcore.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    PayloadTooLarge,
    TaskConflict,
    TaskNotCancellable,
    TaskNotFound,
)
from atcore.idempotency import fingerprint, idempotency_settings
from atcore.models import (
    CHANGEABLE_STATUSES,
    TASK_LIST,
    AttemptList,
    CreateTaskRequest,
    ListFilters,
    PatchTaskRequest,
    RetryTaskRequest,
    Task,
    TaskListing,
    TaskStats,
    TaskStatus,
    check_idempotency_key,
    check_stored_payload_size,
    read_cursor,
)
from atcore.observability import logger


@dataclass(frozen=True)
class Created:
    tasks: list[Task]  # in the request's order
    replayed: bool  # the answer of an earlier request with the same Idempotency-Key


def create_tasks(
    requests: list[CreateTaskRequest], *, batch: bool, body: object, created_by: str | None, idempotency_key: str | None
) -> Created:
    """Create all the tasks or none, in one statement (a POST .../batch, or one POST); with an
    Idempotency-Key, at most once per key (and caller): the key and the answer are stored in the
    transaction that creates the tasks. `body` is the request as parsed, for the key's fingerprint."""
    for index, request in enumerate(requests):
        try:
            check_stored_payload_size(request.payload)
        except ValueError as exc:
            raise PayloadTooLarge(f"tasks[{index}].payload: {exc}" if batch else str(exc)) from None
    if idempotency_key is None:
        with db.connection() as conn:
            tasks = _insert(conn, requests, created_by, batch)
        return _created(tasks)
    try:
        key = check_idempotency_key(idempotency_key)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    scope, ttl, request_fingerprint = created_by or "", idempotency_settings().ttl_hours, fingerprint(body)
    with db.connection() as conn:  # a replay needs no transaction
        stored = repository.find_idempotency_key(conn, scope, key, ttl)
    if stored is None:
        try:
            with db.transaction() as conn:
                tasks = _insert(conn, requests, created_by, batch)
                if not repository.claim_idempotency_key(
                    conn, scope, key, ttl, fingerprint=request_fingerprint, status_code=HTTPStatus.CREATED, tasks=tasks
                ):
                    raise _KeyTaken  # a concurrent request with this key won: undo ours, answer its answer
            return _created(tasks)
        except _KeyTaken:
            with db.connection() as conn:
                stored = repository.find_idempotency_key(conn, scope, key, ttl)
            if stored is None:  # the winner's key expired in between: rare enough to ask for a retry
                raise TaskConflict("request with this Idempotency-Key is still in progress") from None
    if stored.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was used with a different request")
    logger.info("Create replayed (Idempotency-Key)", extra={"task_ids": [task.id for task in stored_tasks(stored)]})
    return Created(tasks=stored_tasks(stored), replayed=True)


def create_task(request: CreateTaskRequest, created_by: str | None = None) -> Task:
    """One task, no Idempotency-Key (the engine's tests and tools)."""
    return create_tasks([request], batch=False, body=None, created_by=created_by, idempotency_key=None).tasks[0]


class _KeyTaken(Exception):
    pass


def stored_tasks(stored: repository.StoredKey) -> list[Task]:
    return TASK_LIST.validate_json(stored.response)


def _insert(conn: db.Connection, requests: list[CreateTaskRequest], created_by: str | None, batch: bool) -> list[Task]:
    if batch:
        return repository.insert_tasks(conn, requests, created_by)
    return [repository.insert_task(conn, requests[0], created_by)]


def _created(tasks: list[Task]) -> Created:
    if len(tasks) == 1:
        fields = {"task_id": tasks[0].id, "task_type": tasks[0].task_type, "execute_at": tasks[0].execute_at}
        logger.info("Task created", extra=fields)
    else:
        logger.info("Tasks created", extra={"count": len(tasks), "task_ids": [task.id for task in tasks]})
    return Created(tasks=tasks, replayed=False)


def get_task(task_id: int) -> Task:
    with db.connection() as conn:
        task = repository.find_task(conn, task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found")
    return task


def cancel_task(task_id: int) -> Task:
    with db.connection() as conn:
        task = repository.cancel_task(conn, task_id)
        state = None if task is not None else repository.task_state(conn, task_id)
    if task is not None:
        logger.info("Task cancelled", extra={"task_id": task_id})
        return task
    status, _ = _existing(task_id, state)
    raise TaskNotCancellable(f"task {task_id} is already {status.value} and cannot be cancelled")


def update_task(task_id: int, change: PatchTaskRequest) -> Task:
    """PATCH: a pending task's time, payload or max_attempts."""
    if "payload" in change.model_fields_set:
        try:
            check_stored_payload_size(change.payload)
        except ValueError as exc:
            raise PayloadTooLarge(str(exc)) from None
    with db.connection() as conn:
        task = repository.update_task(conn, task_id, change)
        state = None if task is not None else repository.task_state(conn, task_id)
    if task is not None:
        logger.info("Task changed", extra={"task_id": task_id, "fields": sorted(change.model_fields_set)})
        return task
    status, attempts = _existing(task_id, state)
    if status not in CHANGEABLE_STATUSES:
        raise TaskConflict(f"task {task_id} is {status.value} and cannot be changed")
    raise InvalidRequest(f"max_attempts must be at least {attempts + 1}: task {task_id} has made {attempts} attempts")


def retry_task(task_id: int, request: RetryTaskRequest | None) -> Task:
    """POST .../retry: a failed or cancelled task pending again, from attempt 1."""
    with db.connection() as conn:
        task = repository.retry_task(conn, task_id, request.execute_at if request else None)
        state = None if task is not None else repository.task_state(conn, task_id)
    if task is not None:
        logger.info("Task retried", extra={"task_id": task_id, "execute_at": task.execute_at})
        return task
    status, _ = _existing(task_id, state)
    raise TaskConflict(f"task {task_id} is {status.value}: only failed or cancelled tasks can be retried")


def list_attempts(task_id: int) -> AttemptList:
    with db.connection() as conn:
        attempts = repository.list_attempts(conn, task_id)
    if attempts is None:
        raise TaskNotFound(f"task {task_id} not found")
    return attempts


def task_stats() -> TaskStats:
    with db.connection() as conn:
        return repository.task_stats(conn)


def _existing(task_id: int, state: tuple[TaskStatus, int] | None) -> tuple[TaskStatus, int]:
    if state is None:
        raise TaskNotFound(f"task {task_id} not found")
    return state


def list_tasks(filters: ListFilters, *, limit: int, offset: int, cursor: str | None, max_bytes: int) -> TaskListing:
    """One page of the tasks matching `filters`: from `offset` on, or after the page `cursor` ended;
    tasks past the first `max_bytes` of payload are left for the next page."""
    if filters.execute_after and filters.execute_before and filters.execute_after > filters.execute_before:
        raise InvalidRequest("execute_after must not be later than execute_before")  # swapped, surely
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
