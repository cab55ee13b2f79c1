"""Every endpoint through its Lambda handler, with the events/ files, against real PostgreSQL."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from atcore.models import MAX_PAYLOAD_DEPTH
from devtools.support.functions import invoke, invoke_raw, load_event

FUTURE = "2099-01-01T12:00:00Z"


def create_event(**fields):
    body = {"execute_at": FUTURE, "task_type": "send_email", "payload": {"to": "a@example.com"}} | fields
    return load_event("create_task", body=json.dumps(body))


def id_event(name, task_id):
    event = load_event(name)
    return event | {"path": f"/api/v1/tasks/{task_id}", "pathParameters": {"id": str(task_id)}}


def list_event(**query):
    return load_event(
        "list_tasks",
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
    )


def create_task(**fields):
    status, body = invoke("create_task", create_event(**fields))
    assert status == 201, body
    return body["task"]


def row_count(sql):
    return sql.run("SELECT count(*) FROM scheduled_tasks")[0][0]


# --- create -------------------------------------------------------------------------------


def test_create_returns_the_stored_task(sql):
    status, body = invoke("create_task", load_event("create_task"))
    assert status == 201
    task = body["task"]
    assert task["id"] == 1
    assert task["execute_at"] == "2099-01-01T12:00:00Z"
    assert task["task_type"] == "send_email"
    assert task["payload"] == {"to": "user@example.com", "subject": "Reminder"}
    assert (task["status"], task["attempts"], task["max_attempts"]) == ("pending", 0, 3)
    assert task["created_at"].endswith("Z") and task["updated_at"].endswith("Z")
    assert "completed_at" not in task and "error_message" not in task
    assert sql.run("SELECT status, attempts FROM scheduled_tasks WHERE id = 1") == [["pending", 0]]


def test_create_normalises_offsets_to_utc(sql):
    assert create_task(execute_at="2099-01-01T15:00:00+03:00")["execute_at"] == "2099-01-01T12:00:00Z"


@pytest.mark.parametrize(
    "payload", ["text", 42, [1, 2], {"k": {"n": [True, None, 1.25]}}, {"emoji": "🙂", "ru": "привет"}]
)
def test_payload_round_trips(sql, payload):
    created = create_task(payload=payload)
    status, body = invoke("get_task", id_event("get_task", created["id"]))
    assert status == 200 and body["task"]["payload"] == payload


def test_the_deepest_payload_allowed_is_answered_everywhere(sql):
    # Deeper payloads were stored and then answered with 500 (pydantic-core's serializer stops near
    # 255 levels), on create and on every read or list page holding the task.
    deepest = 1
    for _ in range(MAX_PAYLOAD_DEPTH):
        deepest = [deepest]
    created = create_task(payload=deepest)
    assert invoke("get_task", id_event("get_task", created["id"]))[1]["task"]["payload"] == deepest
    assert invoke("list_tasks", list_event())[1]["tasks"][0]["payload"] == deepest
    status, body = invoke("create_task", create_event(payload=[deepest]))
    assert status == 400 and body["error"] == f"payload must not be nested more than {MAX_PAYLOAD_DEPTH} levels deep"
    assert row_count(sql) == 1


@pytest.mark.parametrize("task_type", ["a\x00b", "\x00", "tab\there", "\x85"])
def test_a_task_type_filter_with_control_characters_is_a_400(sql, task_type):
    # "\x00" used to reach PostgreSQL and come back as 400 "value rejected: invalid byte sequence ..."
    status, body = invoke("list_tasks", list_event(task_type=task_type))
    assert (status, body["error"]) == (400, "task_type must not contain control characters")


def test_strings_with_sql_metacharacters_are_stored_verbatim(sql):
    nasty = "x'); DROP TABLE scheduled_tasks; --"
    task = create_task(task_type=nasty[:50], payload={nasty: nasty})
    assert task["task_type"] == nasty[:50] and task["payload"] == {nasty: nasty}
    assert row_count(sql) == 1


@pytest.mark.parametrize(
    "event_name, message",
    [
        ("create_task_malformed_json", "request body is not valid JSON"),
        ("create_task_past", "execute_at must be in the future"),
        ("create_task_no_timezone", "execute_at must be RFC 3339 with a timezone"),
        ("create_task_null_payload", "payload must not be null"),
        ("create_task_long_type", "task_type must be 1 to 50 characters long"),
    ],
)
def test_bad_create_events_get_400_and_change_nothing(sql, event_name, message):
    status, body = invoke("create_task", load_event(event_name))
    assert status == 400
    assert message in body["error"]
    assert row_count(sql) == 0


@pytest.mark.parametrize(
    "raw_body, message",
    [
        ("", "request body must be a JSON object"),
        (None, "request body must be a JSON object"),
        ("[1, 2]", "request body must be a JSON object"),
        ('"text"', "request body must be a JSON object"),
        ("null", "request body must be a JSON object"),
        ('{"task_type": "t", "payload": 1}', "execute_at is required"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "payload": 1}', "task_type is required"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t"}', "payload is required"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": NaN}', "not valid JSON"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": 1e999}', "not valid JSON"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": "\\u0000"}', "NUL"),
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": "\\ud800"}', "lone surrogates"),
        (
            '{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": ' + "[" * 5000 + "]" * 5000 + "}",
            "nested",
        ),  # Python 3.13's parser takes 5,000 levels; the depth rule then refuses them
        ('{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": ' + "9" * 5000 + "}", "not valid JSON"),
        (
            '{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": 1, "max_attempts": true}',
            "max_attempts must be an integer",
        ),
        (
            '{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": 1, "max_attempts": "3"}',
            "max_attempts must be an integer",
        ),
        (
            '{"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": 1, "max_attempts": 101}',
            "max_attempts must be an integer",
        ),
    ],
)
def test_bad_bodies_get_a_clear_400(sql, raw_body, message):
    status, body = invoke("create_task", load_event("create_task", body=raw_body))
    assert status == 400, body
    assert message in body["error"]
    assert body["details"] and body["details"][0]["message"] == body["error"]
    assert row_count(sql) == 0


def test_json_bodies_are_read_whatever_the_content_type(sql):
    event = create_event()
    event["headers"] = {"Content-Type": "application/x-www-form-urlencoded"}
    event["multiValueHeaders"] = {"Content-Type": ["application/x-www-form-urlencoded"]}
    status, _ = invoke("create_task", event)
    assert status == 201


def test_body_over_256_kib_gets_413(sql):
    big = {"execute_at": FUTURE, "task_type": "t", "payload": "x" * (256 * 1024)}
    status, body = invoke("create_task", load_event("create_task", body=json.dumps(big)))
    assert status == 413 and "exceeds" in body["error"]
    assert row_count(sql) == 0


def test_body_just_under_the_limit_is_accepted(sql):
    envelope = json.dumps({"execute_at": FUTURE, "task_type": "t", "payload": ""})
    payload = "x" * (256 * 1024 - len(envelope))
    body = json.dumps({"execute_at": FUTURE, "task_type": "t", "payload": payload})
    assert len(body) == 256 * 1024
    status, _ = invoke("create_task", load_event("create_task", body=body))
    assert status == 201


def test_execute_at_one_second_ago_is_rejected(sql):
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    status, body = invoke("create_task", create_event(execute_at=past))
    assert status == 400 and body["error"] == "execute_at must be in the future"


# --- get ----------------------------------------------------------------------------------


def test_get_returns_the_task(sql):
    created = create_task()
    status, body = invoke("get_task", id_event("get_task", created["id"]))
    assert status == 200 and body["task"] == created


def test_get_unknown_task_is_404(sql):
    status, body = invoke("get_task", id_event("get_task", 12345))
    assert status == 404 and body == {"error": "task 12345 not found"}


@pytest.mark.parametrize(
    "raw_id",
    [
        "abc",
        "-1",
        "0",
        "1.5",
        "1e3",
        "99999999999999999999",
        "9223372036854775808",
        "1;DROP TABLE scheduled_tasks",
        "%27",
        "١",
    ],
)
def test_odd_ids_are_400_for_get_and_cancel(sql, raw_id):
    for function in ("get_task", "cancel_task"):
        status, body = invoke(function, id_event(function, raw_id))
        assert status == 400, (function, raw_id, body)
        assert body["error"].startswith("id must be an integer from 1 to 9223372036854775807")


def test_largest_id_is_valid_and_simply_not_found(sql):
    status, _ = invoke("get_task", id_event("get_task", 9223372036854775807))
    assert status == 404


# --- cancel -------------------------------------------------------------------------------


def test_cancel_pending_task(sql):
    created = create_task()
    status, body = invoke("cancel_task", id_event("cancel_task", created["id"]))
    assert status == 200
    assert body["task"]["status"] == "cancelled"
    assert body["task"]["updated_at"] >= created["updated_at"]
    assert sql.run("SELECT status FROM scheduled_tasks") == [["cancelled"]]


def test_cancel_processing_task(sql):
    created = create_task()
    sql.run(
        "UPDATE scheduled_tasks SET status = 'processing', attempts = 1, lease_expires_at = now() + interval '1 minute'"
    )
    status, body = invoke("cancel_task", id_event("cancel_task", created["id"]))
    assert status == 200 and body["task"]["status"] == "cancelled"
    assert sql.run("SELECT lease_expires_at FROM scheduled_tasks") == [[None]]


@pytest.mark.parametrize("final_status", ["completed", "failed", "cancelled"])
def test_cancel_finished_task_is_404_saying_why(sql, final_status):
    created = create_task()
    finished_at = "now()" if final_status != "cancelled" else "NULL"
    sql.run(f"UPDATE scheduled_tasks SET status = '{final_status}', completed_at = {finished_at}")
    status, body = invoke("cancel_task", id_event("cancel_task", created["id"]))
    assert status == 404
    assert body["error"] == f"task {created['id']} is already {final_status} and cannot be cancelled"
    assert sql.run("SELECT status FROM scheduled_tasks") == [[final_status]]


def test_cancel_unknown_task_is_404(sql):
    status, body = invoke("cancel_task", id_event("cancel_task", 777))
    assert status == 404 and body["error"] == "task 777 not found"


# --- list ---------------------------------------------------------------------------------


def seed(sql):
    for index in range(7):
        create_task(task_type="email" if index % 2 else "sms", payload={"n": index})
    sql.run("UPDATE scheduled_tasks SET status = 'cancelled' WHERE id IN (1, 2)")


def ids(body):
    return [task["id"] for task in body["tasks"]]


def test_list_newest_first_with_total(sql):
    seed(sql)
    status, body = invoke("list_tasks", list_event())
    assert status == 200
    assert ids(body) == [7, 6, 5, 4, 3, 2, 1] and body["total"] == 7


def test_list_filters_and_total_ignores_paging(sql):
    seed(sql)
    _, body = invoke("list_tasks", list_event(status="pending", task_type="sms", limit="1", offset="1"))
    assert ids(body) == [5] and body["total"] == 3  # pending sms: 7, 5, 3


def test_list_pages_are_stable_and_complete(sql):
    seed(sql)
    pages = [ids(invoke("list_tasks", list_event(limit="3", offset=str(offset)))[1]) for offset in (0, 3, 6)]
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


def test_list_offset_past_the_end(sql):
    seed(sql)
    status, body = invoke("list_tasks", list_event(offset="100"))
    assert status == 200 and body == {"tasks": [], "total": 7}


def test_list_of_empty_table(sql):
    assert invoke("list_tasks", list_event()) == (200, {"tasks": [], "total": 0})


def test_list_limit_zero_means_default_and_large_is_clamped(sql):
    for _ in range(120):
        sql.run(
            "INSERT INTO scheduled_tasks (execute_at, task_type, payload) VALUES (now() + interval '1 day', 't', '{}')"
        )
    assert len(invoke("list_tasks", list_event(limit="0"))[1]["tasks"]) == 50
    _, body = invoke("list_tasks", list_event(limit="1000"))
    assert len(body["tasks"]) == 100 and body["total"] == 120


@pytest.mark.parametrize(
    "query, message",
    [
        ({"limit": "abc"}, "limit must be a non-negative integer"),
        ({"limit": "-1"}, "limit must be"),
        ({"offset": "-5"}, "offset must be a non-negative integer"),
        ({"offset": "1.5"}, "offset must be"),
        ({"status": "done"}, "status must be one of"),
        ({"status": "PENDING"}, "status must be one of"),
        ({"task_type": "x" * 51}, "task_type must be at most 50 characters"),
    ],
)
def test_list_bad_query_is_400(sql, query, message):
    status, body = invoke("list_tasks", list_event(**query))
    assert status == 400 and message in body["error"]


def test_list_bad_events(sql):
    assert invoke("list_tasks", load_event("list_tasks_bad_limit"))[0] == 400
    assert invoke("list_tasks", load_event("list_tasks_bad_status"))[0] == 400


def test_list_filter_with_sql_metacharacters_matches_nothing(sql):
    seed(sql)
    status, body = invoke("list_tasks", list_event(task_type="' OR '1'='1"))
    assert status == 200 and body == {"tasks": [], "total": 0}
    assert row_count(sql) == 7


# --- health -------------------------------------------------------------------------------


def test_health_says_ok(sql):
    response = invoke_raw("health", load_event("health"))
    assert response["statusCode"] == 200 and response["body"] == "OK"
    assert response["multiValueHeaders"]["Content-Type"] == ["text/plain"]


def test_errors_are_json(sql):
    response = invoke_raw("get_task", id_event("get_task", 404404))
    assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]
