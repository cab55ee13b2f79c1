"""End to end over HTTP: `python -m devtools.run` (what `make run` starts) as a real process
(the `api` fixture of tests/conftest.py), against the test database, exercised with the README's
requests."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from conftest import request
from http_sink import HttpSink

pytestmark = pytest.mark.e2e


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_health_is_plain_ok(api):
    assert request("GET", f"{api}/health") == (200, "OK", "text/plain")


def test_readme_flow_create_get_list_cancel(api):
    # curl -X POST .../api/v1/tasks -d '{...}' sends form content type; the API reads JSON anyway
    body = json.dumps({"execute_at": "2099-11-10T15:00:00Z", "task_type": "send_email",
                       "payload": {"to": "user@example.com", "subject": "Reminder"}, "max_attempts": 3})
    status, created, content_type = request("POST", f"{api}/api/v1/tasks", body,
                                            {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201 and content_type == "application/json"
    task = created["task"]
    assert (task["status"], task["attempts"], task["execute_at"]) == ("pending", 0, "2099-11-10T15:00:00Z")

    assert request("GET", f"{api}/api/v1/tasks/{task['id']}")[:2] == (200, {"task": task})

    status, page, _ = request("GET", f"{api}/api/v1/tasks?status=pending&task_type=send_email&limit=20&offset=0")
    assert status == 200 and page["tasks"][0] == task and page["total"] >= 1

    status, cancelled, _ = request("DELETE", f"{api}/api/v1/tasks/{task['id']}")
    assert status == 200 and cancelled["task"]["status"] == "cancelled"
    status, again, _ = request("DELETE", f"{api}/api/v1/tasks/{task['id']}")
    assert status == 404 and "already cancelled" in again["error"]


@pytest.mark.parametrize(
    "method, path, body, expected_status",
    [
        ("GET", "/api/v1/tasks/abc", None, 400),
        ("GET", "/api/v1/tasks/0", None, 400),
        ("DELETE", "/api/v1/tasks/-1", None, 400),
        ("GET", "/api/v1/tasks?limit=abc", None, 400),
        ("GET", "/api/v1/tasks?status=done", None, 400),
        ("POST", "/api/v1/tasks", "{not json", 400),
        ("POST", "/api/v1/tasks", "", 400),
        ("POST", "/api/v1/tasks", '{"execute_at":"2099-01-01T00:00:00Z","task_type":"t","payload":null}', 400),
        ("GET", "/api/v1/tasks/99999999", None, 404),
    ],
)
def test_bad_requests_get_json_errors(api, method, path, body, expected_status):
    status, answer, content_type = request(method, f"{api}{path}", body)
    assert status == expected_status
    assert content_type == "application/json" and isinstance(answer["error"], str) and answer["error"]


def test_oversize_body_is_413(api):
    body = json.dumps({"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": "x" * 300_000})
    status, answer, _ = request("POST", f"{api}/api/v1/tasks", body)
    assert status == 413 and "exceeds" in answer["error"]


def test_non_ascii_task_type_round_trips(api):
    body = json.dumps({"execute_at": "2099-01-01T00:00:00Z", "task_type": "напоминание", "payload": {"ключ": "🙂"}},
                      ensure_ascii=False).encode()
    status, created, _ = request("POST", f"{api}/api/v1/tasks", body, {"Content-Type": "application/json"})
    assert status == 201 and created["task"]["task_type"] == "напоминание"
    query = urllib.request.quote("напоминание")
    status, page, _ = request("GET", f"{api}/api/v1/tasks?task_type={query}")
    assert status == 200 and page["tasks"][0]["payload"] == {"ключ": "🙂"}


def test_answers_carry_non_ascii_as_utf8_and_pages_say_how_to_go_on(api):
    body = json.dumps({"execute_at": "2099-01-01T00:00:00Z", "task_type": "utf8-pages", "payload": {"é": "привет 🙂"}})
    for _ in range(3):
        assert request("POST", f"{api}/api/v1/tasks", body)[0] == 201
    with urllib.request.urlopen(f"{api}/api/v1/tasks?task_type=utf8-pages&limit=2", timeout=10) as response:
        raw = response.read()
    assert "привет 🙂".encode() in raw and b"\\u" not in raw  # UTF-8 on the wire, not \u escapes
    page = json.loads(raw)
    assert len(page["tasks"]) == 2 and page["tasks"][0]["payload"] == {"é": "привет 🙂"} and page["total"] == 3
    cursor = urllib.request.quote(page["next_cursor"])
    status, rest, _ = request("GET", f"{api}/api/v1/tasks?task_type=utf8-pages&limit=2&cursor={cursor}")
    assert status == 200 and len(rest["tasks"]) == 1 and "next_cursor" not in rest
    assert rest["tasks"][0]["id"] < page["tasks"][-1]["id"]


def test_task_created_over_http_runs_on_time(api):
    with HttpSink() as sink:
        body = json.dumps({"execute_at": in_seconds(1.5), "task_type": "http_callback",
                           "payload": {"url": sink.url, "method": "PUT", "data": {"n": 1}}})
        status, created, _ = request("POST", f"{api}/api/v1/tasks", body)
        assert status == 201
        task_id = created["task"]["id"]
        due = datetime.fromisoformat(created["task"]["execute_at"].replace("Z", "+00:00")).timestamp()
        deadline = time.monotonic() + 10
        while request("GET", f"{api}/api/v1/tasks/{task_id}")[1]["task"]["status"] != "completed":
            assert time.monotonic() < deadline, "task did not complete"
            time.sleep(0.05)
        [arrival] = sink.by_task()[task_id]
    assert arrival.method == "PUT" and 0 <= arrival.at - due < 1.0


def test_unknown_route_answers_like_api_gateway(api):
    status, answer, _ = request("GET", f"{api}/api/v2/nothing")
    assert status == 403 and answer == {"message": "Missing Authentication Token"}


def test_body_that_is_not_utf8_is_a_400(api):
    status, answer, _ = request("POST", f"{api}/api/v1/tasks", b"\x80\xff", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in answer["error"]
