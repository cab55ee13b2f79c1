"""End to end over HTTP: `python -m devtools.run` (what `make run` starts) as a real process
(the `api` fixture of tests/conftest.py), against the test database, exercised with the README's
requests."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from devtools.support.functions import ROOT
from devtools.support.http import request
from devtools.support.http_sink import HttpSink

pytestmark = pytest.mark.e2e


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_health_is_plain_ok(api):
    assert request("GET", f"{api}/health") == (200, "OK", "text/plain")


def test_readme_flow_create_get_list_cancel(api):
    # curl -X POST .../api/v1/tasks -d '{...}' sends form content type; the API reads JSON anyway
    body = json.dumps(
        {
            "execute_at": "2099-11-10T15:00:00Z",
            "task_type": "send_email",
            "payload": {"to": "user@example.com", "subject": "Reminder"},
            "max_attempts": 3,
        }
    )
    status, created, content_type = request(
        "POST", f"{api}/api/v1/tasks", body, {"Content-Type": "application/x-www-form-urlencoded"}
    )
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
    body = json.dumps(
        {"execute_at": "2099-01-01T00:00:00Z", "task_type": "напоминание", "payload": {"ключ": "🙂"}},
        ensure_ascii=False,
    ).encode()
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
        body = json.dumps(
            {
                "execute_at": in_seconds(1.5),
                "task_type": "http_callback",
                "payload": {"url": sink.url, "method": "PUT", "data": {"n": 1}},
            }
        )
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


def test_concurrent_creates_each_get_and_store_their_own_request(api, sql):
    # Powertools' resolver keeps the current event on a class, so two invocations served by
    # threads of one process answered (and stored) each other's body; a process must serve
    # one invocation at a time, like a Lambda execution environment.
    clients, creates_each = 40, 100

    def create(client: int) -> list[tuple[dict, dict]]:
        results = []
        for n in range(creates_each):
            sent = {
                "execute_at": "2099-01-01T00:00:00Z",
                "task_type": f"isolation-{client}-{n}",
                "payload": {"client": client, "n": n},
                "max_attempts": 1 + (client * creates_each + n) % 100,
            }
            status, created, _ = request(
                "POST", f"{api}/api/v1/tasks", json.dumps(sent), {"Content-Type": "application/json"}
            )
            assert status == 201, created
            results.append((sent, created["task"]))
        return results

    with ThreadPoolExecutor(clients) as pool:
        results = [pair for pairs in pool.map(create, range(clients)) for pair in pairs]

    answered_wrong = [
        (sent["task_type"], task["task_type"])
        for sent, task in results
        if (task["task_type"], task["payload"], task["max_attempts"])
        != (sent["task_type"], sent["payload"], sent["max_attempts"])
    ]
    stored = {
        row[0]: tuple(row[1:]) for row in sql.run("SELECT id, task_type, payload, max_attempts FROM scheduled_tasks")
    }
    stored_wrong = [
        (sent["task_type"], stored.get(task["id"]))
        for sent, task in results
        if stored.get(task["id"]) != (sent["task_type"], sent["payload"], sent["max_attempts"])
    ]
    assert (answered_wrong[:5], len(answered_wrong)) == ([], 0)
    assert (stored_wrong[:5], len(stored_wrong)) == ([], 0)
    assert len(stored) == clients * creates_each


def wait_for_status(api, task_id: int, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while (task := request("GET", f"{api}/api/v1/tasks/{task_id}")[1]["task"])["status"] != status:
        assert time.monotonic() < deadline, f"task is still {task['status']}: {task}"
        time.sleep(0.05)
    return task


def test_readme_first_example_delivers_the_email_to_the_outbox(api):
    # The README's first curl, as written, but due in 1-2 s instead of 10 (curl -d sends a form's
    # Content-Type and no Origin); its e-mail names no "from": the local run has a default sender.
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"curl -s -X POST http://127\.0\.0\.1:8080/api/v1/tasks \\\n\s*-d '(.*?\})'", readme, re.S)
    assert command, "the README's first example is no longer a curl -d POST"
    body = re.sub(r"""\"'"\$\(date [^)]*\)"'\"""", f'"{in_seconds(2)[:19]}Z"', command.group(1))
    assert "from" not in json.loads(body)["payload"]
    status, created, _ = request(
        "POST", f"{api}/api/v1/tasks", body, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 201, created
    task = wait_for_status(api, created["task"]["id"], "completed")
    assert task["attempts"] == 1 and "error_message" not in task
    sent = [json.loads(line) for line in (api.outbox / "email.jsonl").read_text().splitlines()]
    [email] = [record["message"] for record in sent if record["task_id"] == task["id"]]
    payload = json.loads(body)["payload"]
    assert email["from"] == "at@localhost"
    assert (email["to"], email["subject"], email["text"]) == ([payload["to"]], payload["subject"], payload["text"])


SAFE_TASK = json.dumps(
    {
        "execute_at": "2099-01-01T00:00:00Z",
        "task_type": "http_callback",
        "payload": {"url": "http://169.254.169.254/latest/meta-data/"},
    }
)


@pytest.mark.parametrize(
    "headers, refused_because",
    [
        ({"Host": "evil.example"}, "Host"),
        ({"Host": "evil.example:{port}"}, "Host"),
        ({"Host": "127.0.0.1.nip.io:{port}"}, "Host"),
        ({"Host": "localhost:1"}, "Host"),
        ({"Origin": "https://evil.example", "Content-Type": "text/plain"}, "cross-origin"),
        ({"Origin": "null", "Content-Type": "application/json"}, "cross-origin"),
        ({"Origin": "http://127.0.0.1:1", "Content-Type": "application/json"}, "cross-origin"),
        ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Content-Type": "text/plain"}, "cross-site"),
        ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, "cross-site"),
        ({"Origin": "{origin}", "Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}, "application/json"),
        ({"Origin": "{origin}", "Content-Type": "application/x-www-form-urlencoded"}, "application/json"),
    ],
)
def test_requests_a_web_page_could_send_are_refused(api, sql, headers, refused_because):
    # A page on another site (or one DNS-rebound to 127.0.0.1) must not create tasks through a
    # visitor's local run: they could call loopback, the LAN or the metadata service.
    port = api.rsplit(":", 1)[1]
    headers = {name: value.format(port=port, origin=api) for name, value in headers.items()}
    status, answer, content_type = request("POST", f"{api}/api/v1/tasks", SAFE_TASK, headers)
    assert (status, content_type) == (403, "application/json"), answer
    assert refused_because in answer["error"]
    assert sql.run("SELECT count(*) FROM scheduled_tasks")[0][0] == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_local_names_and_own_origin_are_served(api, sql, host):
    port = api.rsplit(":", 1)[1]
    for host_header in (f"{host}:{port}", host):
        browser = {
            "Host": host_header,
            "Origin": f"http://{host}:{port}",
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/json",
        }
        assert request("POST", f"{api}/api/v1/tasks", SAFE_TASK, browser)[0] == 201
    curl = {"Host": f"{host}:{port}", "Content-Type": "application/x-www-form-urlencoded"}
    assert request("POST", f"{api}/api/v1/tasks", SAFE_TASK, curl)[0] == 201
    swagger = {
        "Host": f"{host}:{port}",
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "cors",
        "Referer": f"http://{host}:{port}/docs",
    }
    for path in ("/docs", "/openapi.json", "/api/v1/tasks?limit=1"):
        assert request("GET", f"{api}{path}", headers=swagger | {"Sec-Fetch-Site": "none"})[0] == 200, path
        assert request("GET", f"{api}{path}", headers=swagger)[0] == 200, path


def test_console_is_one_json_line_per_request_and_no_warnings(api):
    def console() -> list[str]:
        return api.console.read_text().splitlines()

    before = len(console())
    task_id = request("POST", f"{api}/api/v1/tasks", SAFE_TASK)[1]["task"]["id"]
    for _ in range(3):
        request("GET", f"{api}/api/v1/tasks/{task_id}")
    request("GET", f"{api}/api/v1/tasks/987654321")
    request("GET", f"{api}/health", headers={"Host": "evil.example"})  # the last one
    deadline = time.monotonic() + 5
    while not any('"status":403' in line for line in console()[before:]) and time.monotonic() < deadline:
        time.sleep(0.05)  # each process writes its lines when it has answered
    lines = console()
    assert not [line for line in lines if "UserWarning" in line or "No application metrics" in line]
    entries = [json.loads(line) for line in lines]  # every line is JSON: no plain tracebacks or prints
    assert all({"level", "message", "timestamp"} <= entry.keys() for entry in entries)
    served = [(e["method"], e["path"], e["status"]) for e in entries[before:] if "duration_ms" in e]
    assert sorted(served) == sorted(
        [
            ("POST", "/api/v1/tasks", 201),
            *[("GET", f"/api/v1/tasks/{task_id}", 200)] * 3,
            ("GET", "/api/v1/tasks/987654321", 404),
            ("GET", "/health", 403),
        ]
    )
    assert all(isinstance(e["duration_ms"], float) for e in entries[before:] if "duration_ms" in e)
    assert any(e["message"] == "Task created" and e.get("task_id") == task_id for e in entries[before:])
    [refused] = [e for e in entries[before:] if e.get("status") == 403]
    assert refused["level"] == "WARNING" and "evil.example" in refused["refused"]
