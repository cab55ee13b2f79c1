"""The v1.1 additions through their Lambda handlers against real PostgreSQL: Idempotency-Key,
batch creates, PATCH, retry, attempt history, stats and created_by, with the races the contract
names (the same key at once, PATCH against a claim). Bad input is a clear 4xx that changes nothing.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from copy import deepcopy
from typing import Any

import pytest

from atcore import db, execution, execution_repository, service
from atcore.errors import TaskConflict
from atcore.models import CreateTaskRequest, PatchTaskRequest
from devtools.support.functions import invoke, invoke_raw, load_event

FUTURE = "2099-01-01T12:00:00Z"
ARN = "arn:aws:iam::123456789012:user/ann"


def event(
    name: str, *, task_id: int | None = None, body: Any = None, headers: dict | None = None, caller: dict | None = None
) -> dict:
    """events/<name>.json with another id, body, headers or caller (as API Gateway fills them in)."""
    ev = deepcopy(load_event(name))
    if task_id is not None:
        ev["path"] = ev["resource"].replace("{id}", str(task_id))
        ev["pathParameters"] = {"id": str(task_id)}
    if body is not None:
        ev["body"] = body if isinstance(body, str) else json.dumps(body)
    for name_, value in (headers or {}).items():
        ev["headers"][name_] = value
        ev["multiValueHeaders"][name_] = [value]
    if caller:
        ev["requestContext"]["identity"] |= caller
    return ev


def create(fields: dict | None = None, **kwargs: Any) -> tuple[int, Any]:
    body = {"execute_at": FUTURE, "task_type": "send_email", "payload": {"to": "a@example.com"}} | (fields or {})
    return invoke("create_task", event("create_task", body=body, **kwargs))


def tasks_in(sql) -> int:
    return sql.run("SELECT count(*) FROM scheduled_tasks")[0][0]


def header(response: dict, name: str) -> str | None:
    values = (response.get("multiValueHeaders") or {}).get(name) or []
    return values[0] if values else (response.get("headers") or {}).get(name)


# --- Idempotency-Key -------------------------------------------------------------------------------


def test_the_same_key_and_request_again_replays_the_first_answer_and_creates_nothing(sql):
    first = invoke_raw("create_task", event("create_task", headers={"Idempotency-Key": "order-42"}))
    assert first["statusCode"] == 201 and header(first, "Idempotent-Replayed") is None
    task_id = json.loads(first["body"])["task"]["id"]
    service.cancel_task(task_id)  # the task changes; the replay is still the answer as it was

    again = invoke_raw("create_task", event("create_task", headers={"Idempotency-Key": "order-42"}))
    assert again["statusCode"] == 201 and header(again, "Idempotent-Replayed") == "true"
    assert again["body"] == first["body"]
    assert tasks_in(sql) == 1


def test_the_fingerprint_is_the_parsed_request_however_it_is_written(sql):
    body = {"execute_at": FUTURE, "task_type": "t", "payload": {"a": 1, "b": [1, 2]}}
    written_otherwise = '{ "payload": {"b": [1,2], "a": 1}, "task_type": "t", "execute_at": "2099-01-01T12:00:00Z" }'
    assert invoke("create_task", event("create_task", body=body, headers={"Idempotency-Key": "k"}))[0] == 201
    assert (
        invoke("create_task", event("create_task", body=written_otherwise, headers={"Idempotency-Key": "k"}))[0] == 201
    )
    assert tasks_in(sql) == 1


def test_the_same_key_with_another_request_is_422_and_creates_nothing(sql):
    assert create(headers={"Idempotency-Key": "k"})[0] == 201
    status, body = create({"payload": {"to": "b@example.com"}}, headers={"Idempotency-Key": "k"})
    assert status == 422 and body == {"error": "Idempotency-Key 'k' was used with a different request"}
    assert tasks_in(sql) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there", "line\nbreak"])
def test_a_malformed_key_is_400_and_creates_nothing(sql, key):
    status, body = create(headers={"Idempotency-Key": key})
    assert status == 400 and "Idempotency-Key must be 1 to 255 printable ASCII characters" in body["error"]
    assert tasks_in(sql) == 0


def test_without_a_key_every_create_is_a_new_task_and_keys_are_per_caller(sql):
    assert create()[0] == create()[0] == 201
    assert create(headers={"Idempotency-Key": "k"}, caller={"userArn": ARN})[0] == 201
    assert create(headers={"Idempotency-Key": "k"}, caller={"userArn": ARN + "-bob"})[0] == 201
    assert tasks_in(sql) == 4


def test_a_key_past_its_ttl_is_forgotten_and_deleted_by_housekeeping(sql, monkeypatch):
    assert create(headers={"Idempotency-Key": "k"})[0] == 201
    sql.run("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    assert create({"payload": {"to": "b@example.com"}}, headers={"Idempotency-Key": "k"})[0] == 201  # a new request
    assert tasks_in(sql) == 2
    sql.run("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    with db.connection() as conn:
        execution.housekeeping(conn, execution.execution_settings())
    assert sql.run("SELECT count(*) FROM idempotency_keys") == [[0]]


def test_concurrent_requests_with_one_key_create_exactly_one_task(sql):
    request = CreateTaskRequest(execute_at=FUTURE, task_type="t", payload={"n": 1})
    body = {"execute_at": FUTURE, "task_type": "t", "payload": {"n": 1}}
    start, results = threading.Barrier(8), []

    def create_once() -> None:
        start.wait()
        results.append(service.create_tasks([request], batch=False, body=body, created_by=None, idempotency_key="same"))

    threads = [threading.Thread(target=create_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8 and tasks_in(sql) == 1
    # (The losers' inserts were rolled back: their ids are spent, so the one task's id may not be 1.)
    [[task_id]] = sql.run("SELECT id FROM scheduled_tasks")
    assert {created.tasks[0].id for created in results} == {task_id}
    assert sorted(created.replayed for created in results) == [False] + [True] * 7


# --- batch -----------------------------------------------------------------------------------------


def batch_of(*items: dict) -> dict:
    return {
        "tasks": [{"execute_at": FUTURE, "task_type": "t", "payload": {"n": n}} | item for n, item in enumerate(items)]
    }


def test_a_batch_creates_every_task_in_order_in_one_go(sql):
    status, body = invoke(
        "create_tasks_batch",
        event("create_tasks_batch", body=batch_of({}, {}, {"max_attempts": 5}), caller={"userArn": ARN}),
    )
    assert status == 201
    assert [task["payload"] for task in body["tasks"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [task["id"] for task in body["tasks"]] == [1, 2, 3] and body["tasks"][2]["max_attempts"] == 5
    assert {task["created_by"] for task in body["tasks"]} == {ARN}
    assert tasks_in(sql) == 3


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{}, {"execute_at": "2001-01-01T00:00:00Z"}], "tasks[1].execute_at: execute_at must be in the future"),
        ([{"task_type": ""}], "tasks[0].task_type: task_type must be 1 to 50 characters long"),
        ([{}, {"payload": None}], "tasks[1].payload: payload must not be null"),
    ],
)
def test_one_bad_item_refuses_the_whole_batch_naming_it(sql, items, message):
    status, body = invoke("create_tasks_batch", event("create_tasks_batch", body=batch_of(*items)))
    assert status == 400 and body["error"] == message
    assert tasks_in(sql) == 0


@pytest.mark.parametrize("count", [0, 1001])
def test_a_batch_holds_1_to_1000_tasks(sql, count):
    status, body = invoke("create_tasks_batch", event("create_tasks_batch", body=batch_of(*[{}] * count)))
    assert status == 400 and body["details"][0]["field"] == "tasks"
    assert tasks_in(sql) == 0


def test_a_batch_body_may_exceed_a_creates_limit_but_not_5_mib(sql):
    big = {"payload": {"text": "x" * 200_000}}
    assert invoke("create_tasks_batch", event("create_tasks_batch", body=batch_of(*[big] * 5)))[0] == 201  # ~1 MB
    status, body = invoke("create_tasks_batch", event("create_tasks_batch", body=batch_of(*[big] * 27)))  # ~5.4 MB
    assert status == 413 and "5242880 bytes" in body["error"]
    assert tasks_in(sql) == 5


def test_a_batch_with_a_key_is_replayed_whole(sql):
    first = invoke_raw("create_tasks_batch", event("create_tasks_batch", headers={"Idempotency-Key": "b"}))
    again = invoke_raw("create_tasks_batch", event("create_tasks_batch", headers={"Idempotency-Key": "b"}))
    assert (first["statusCode"], again["statusCode"]) == (201, 201) and again["body"] == first["body"]
    assert header(again, "Idempotent-Replayed") == "true" and tasks_in(sql) == 2


# --- PATCH -----------------------------------------------------------------------------------------


def patch(task_id: int, body: Any) -> tuple[int, Any]:
    return invoke("update_task", event("update_task", task_id=task_id, body=body))


def test_patch_changes_a_pending_task(sql):
    task = create()[1]["task"]
    status, body = patch(
        task["id"], {"execute_at": "2099-06-01T00:00:00+02:00", "payload": [1], "max_attempts": 7, "unknown": "ignored"}
    )
    assert status == 200
    changed = body["task"]
    assert (changed["execute_at"], changed["payload"], changed["max_attempts"]) == ("2099-05-31T22:00:00Z", [1], 7)
    assert changed["updated_at"] > task["updated_at"] and changed["created_at"] == task["created_at"]
    assert patch(task["id"], {"payload": {"only": "this"}})[1]["task"]["execute_at"] == "2099-05-31T22:00:00Z"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "request body must set at least one of execute_at, payload, max_attempts"),
        ({"unknown": 1}, "request body must set at least one of execute_at, payload, max_attempts"),
        ({"payload": None}, "payload must not be null"),
        ({"execute_at": "2001-01-01T00:00:00Z"}, "execute_at must be in the future"),
        ({"execute_at": None}, "execute_at must be RFC 3339 with a timezone"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 100"),
        ("[1]", "request body must be a JSON object"),
    ],
)
def test_bad_patches_are_400_and_change_nothing(sql, body, message):
    task_id = create()[1]["task"]["id"]
    before = sql.run("SELECT * FROM scheduled_tasks")
    status, answer = patch(task_id, body)
    assert status == 400 and message in answer["error"], answer
    assert sql.run("SELECT * FROM scheduled_tasks") == before


def test_max_attempts_cannot_go_below_the_attempts_made(sql):
    task_id = create({"max_attempts": 5})[1]["task"]["id"]
    sql.run("UPDATE scheduled_tasks SET attempts = 2")
    status, body = patch(task_id, {"max_attempts": 2})
    assert status == 400 and body["error"] == "max_attempts must be at least 3: task 1 has made 2 attempts"
    assert patch(task_id, {"max_attempts": 3})[0] == 200


def test_only_a_pending_task_can_be_changed(sql):
    task_id = create()[1]["task"]["id"]
    service.cancel_task(task_id)
    status, body = patch(task_id, {"max_attempts": 4})
    assert status == 409 and body == {"error": "task 1 is cancelled and cannot be changed"}
    assert patch(99, {"max_attempts": 4})[0] == 404


def test_rescheduling_withdraws_a_hand_off_so_the_old_message_starts_nothing(sql):
    task_id = create({"execute_at": "2099-01-01T00:00:00Z"})[1]["task"]["id"]
    sql.run("UPDATE scheduled_tasks SET execute_at = now() - interval '1 second'")  # due
    with db.connection() as conn:
        [ref] = execution.hand_over_due(conn, 10, 60)
    assert patch(task_id, {"execute_at": FUTURE})[0] == 200
    assert sql.run("SELECT queued_until FROM scheduled_tasks") == [[None]]
    with db.connection() as conn:
        assert execution_repository.start_attempts(conn, [ref], lease_seconds=60) == []


def test_a_patch_racing_a_claim_waits_and_loses(sql, database_server, database):
    task_id = create()[1]["task"]["id"]
    sql.run("UPDATE scheduled_tasks SET execute_at = now() - interval '1 second'")
    claimer = database_server.connect(database)
    outcome: list[object] = []
    try:
        claimer.run("BEGIN")
        claimer.run(
            "UPDATE scheduled_tasks SET status = 'processing', attempts = 1, "
            "lease_expires_at = now() + interval '1 minute'"
        )  # a claim, not yet committed

        def change() -> None:
            try:
                outcome.append(service.update_task(task_id, PatchTaskRequest(max_attempts=5)))
            except TaskConflict as exc:
                outcome.append(exc)

        patching = threading.Thread(target=change)
        patching.start()
        time.sleep(0.3)
        assert outcome == []  # the PATCH waits for the claim's row lock
        claimer.run("COMMIT")
        patching.join(10)
    finally:
        claimer.close()
    [result] = outcome
    assert isinstance(result, TaskConflict) and result.message == "task 1 is processing and cannot be changed"
    assert sql.run("SELECT status, max_attempts FROM scheduled_tasks") == [["processing", 3]]


# --- retry -----------------------------------------------------------------------------------------


def failed_task(sql, attempts: int = 3) -> int:
    task_id = create()[1]["task"]["id"]
    sql.run(
        "UPDATE scheduled_tasks SET status = 'failed', attempts = :n, completed_at = now(), "
        "error_message = 'callback returned HTTP 500'",
        n=attempts,
    )
    sql.run(
        "INSERT INTO task_attempts (task_id, number, started_at, finished_at, outcome, error) "
        "SELECT :id, n, now(), now(), 'failed', 'callback returned HTTP 500' FROM generate_series(1, :n) n",
        id=task_id,
        n=attempts,
    )
    return task_id


def test_retry_makes_a_failed_task_pending_again_and_its_history_keeps_counting(sql):
    task_id = failed_task(sql, attempts=3)
    status, body = invoke("retry_task", event("retry_task", task_id=task_id))
    assert status == 200
    task = body["task"]
    assert (task["status"], task["attempts"]) == ("pending", 0)
    assert "completed_at" not in task and "error_message" not in task
    with db.connection() as conn:
        [claimed] = execution.claim_due(conn, 10, 60)  # due at once
    assert claimed.id == task_id and claimed.attempt == 1
    assert [row[0] for row in sql.run("SELECT number FROM task_attempts ORDER BY number")] == [1, 2, 3, 4]


@pytest.mark.parametrize("body", ["", "{}", '{"execute_at": "2099-03-01T00:00:00Z"}'])
def test_retry_takes_an_optional_time(sql, body):
    task_id = failed_task(sql)
    status, answer = invoke("retry_task", event("retry_task", task_id=task_id, body=body))
    assert status == 200
    assert (answer["task"]["execute_at"] == "2099-03-01T00:00:00Z") == ("2099" in body)


def test_only_failed_or_cancelled_tasks_can_be_retried(sql):
    task_id = create()[1]["task"]["id"]
    status, body = invoke("retry_task", event("retry_task", task_id=task_id))
    assert status == 409 and body == {"error": "task 1 is pending: only failed or cancelled tasks can be retried"}
    assert invoke("retry_task", event("retry_task", task_id=99))[0] == 404
    status, body = invoke(
        "retry_task", event("retry_task", task_id=task_id, body={"execute_at": "2001-01-01T00:00:00Z"})
    )
    assert status == 400 and body["error"] == "execute_at must be in the future"


@pytest.mark.parametrize("body", ["[null, null]", '"now"', "3"])
def test_a_retry_body_that_is_not_an_object_is_400(sql, body):
    task_id = failed_task(sql)
    status, answer = invoke("retry_task", event("retry_task", task_id=task_id, body=body))
    assert status == 400 and answer["error"] == "request body must be a JSON object"
    assert sql.run("SELECT status FROM scheduled_tasks") == [["failed"]]


def test_a_cancelled_task_can_be_retried(sql):
    task_id = create()[1]["task"]["id"]
    service.cancel_task(task_id)
    assert invoke("retry_task", event("retry_task", task_id=task_id))[1]["task"]["status"] == "pending"


# --- attempts, stats, created_by -------------------------------------------------------------------


def test_attempts_are_listed_oldest_first_with_their_outcome(sql):
    task_id = failed_task(sql, attempts=2)
    sql.run("UPDATE task_attempts SET finished_at = started_at + interval '1.5 seconds'")
    sql.run("INSERT INTO task_attempts (task_id, number, started_at) VALUES (:id, 3, now())", id=task_id)
    status, body = invoke("list_attempts", event("list_attempts", task_id=task_id))
    assert status == 200 and body["total"] == 3
    first, _, running = body["attempts"]
    assert (first["number"], first["outcome"], first["error"], first["duration_ms"]) == (
        1,
        "failed",
        "callback returned HTTP 500",
        1500,
    )
    assert first["started_at"].endswith("Z") and first["finished_at"].endswith("Z")
    assert running == {"number": 3, "started_at": running["started_at"], "outcome": "running"}


def test_attempts_of_an_unknown_task_is_404_and_of_a_new_one_empty(sql):
    assert invoke("list_attempts", event("list_attempts", task_id=5)) == (404, {"error": "task 5 not found"})
    task_id = create()[1]["task"]["id"]
    assert invoke("list_attempts", event("list_attempts", task_id=task_id)) == (200, {"attempts": [], "total": 0})


def test_stats_count_exactly_and_say_what_is_due(sql):
    status, body = invoke("get_stats", load_event("get_stats"))
    assert status == 200 and body == {
        "counts": {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0},
        "total": 0,
        "oldest_due_age_seconds": 0.0,
    }
    create({"execute_at": "2099-02-01T00:00:00Z"})
    create({"execute_at": FUTURE})
    service.cancel_task(create()[1]["task"]["id"])
    sql.run("UPDATE scheduled_tasks SET execute_at = now() - interval '1 minute' WHERE id = 2")
    body = invoke("get_stats", load_event("get_stats"))[1]
    assert body["counts"] == {"pending": 2, "processing": 0, "completed": 0, "failed": 0, "cancelled": 1}
    assert body["total"] == 3 and 59 < body["oldest_due_age_seconds"] < 120
    assert body["next_execute_at"] == "2099-02-01T00:00:00Z"


@pytest.fixture
def log_lines():
    """The JSON lines Powertools' logger writes meanwhile, at INFO and above."""
    from atcore.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    level = logger.log_level
    logger.addHandler(handler)
    logger.setLevel("INFO")
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("identity", "expected"), [({"userArn": ARN}, ARN), ({"apiKeyId": "k3y1d"}, "k3y1d"), ({}, None)]
)
def test_a_task_records_who_created_it_and_so_does_every_log_line(sql, log_lines, identity, expected):
    status, body = create(caller=identity)
    assert status == 201 and body["task"].get("created_by") == expected
    assert invoke("get_task", event("get_task", task_id=body["task"]["id"]))[1]["task"].get("created_by") == expected
    created = [line for line in log_lines() if line.get("message") == "Task created"]
    assert created and all(line.get("created_by") == expected for line in created)
