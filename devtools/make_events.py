"""Write events/*.json: API Gateway REST (v1 proxy) events, one per function and bad-input case.

Run `python -m devtools.make_events` after changing the cases; the files are committed so
`sam local invoke -e events/<name>.json` and the tests use the same events.
"""

from __future__ import annotations

import json
from pathlib import Path

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"

# name: (method, resource, path, path parameters, query, body)
CASES: dict[str, tuple[str, str, str, dict | None, dict | None, str | None]] = {
    "create_task": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, json.dumps({
        "execute_at": "2099-01-01T12:00:00Z", "task_type": "send_email",
        "payload": {"to": "user@example.com", "subject": "Reminder"}, "max_attempts": 3})),
    "create_task_malformed_json": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, '{"execute_at": '),
    "create_task_past": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, json.dumps({
        "execute_at": "2001-01-01T00:00:00Z", "task_type": "send_email", "payload": {}})),
    "create_task_no_timezone": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, json.dumps({
        "execute_at": "2099-01-01T12:00:00", "task_type": "send_email", "payload": {}})),
    "create_task_null_payload": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, json.dumps({
        "execute_at": "2099-01-01T12:00:00Z", "task_type": "send_email", "payload": None})),
    "create_task_long_type": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, json.dumps({
        "execute_at": "2099-01-01T12:00:00Z", "task_type": "x" * 51, "payload": {}})),
    "get_task": ("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/1", {"id": "1"}, None, None),
    "get_task_bad_id": ("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/-1", {"id": "-1"}, None, None),
    "cancel_task": ("DELETE", "/api/v1/tasks/{id}", "/api/v1/tasks/1", {"id": "1"}, None, None),
    "cancel_task_bad_id": ("DELETE", "/api/v1/tasks/{id}", "/api/v1/tasks/1e3", {"id": "1e3"}, None, None),
    "list_tasks": ("GET", "/api/v1/tasks", "/api/v1/tasks", None,
                   {"status": "pending", "task_type": "send_email", "limit": "20", "offset": "0"}, None),
    "list_tasks_bad_limit": ("GET", "/api/v1/tasks", "/api/v1/tasks", None, {"limit": "abc"}, None),
    "list_tasks_bad_status": ("GET", "/api/v1/tasks", "/api/v1/tasks", None, {"status": "done"}, None),
    "health": ("GET", "/health", "/health", None, None, None),
}


def api_event(method: str, resource: str, path: str, path_params: dict | None, query: dict | None,
              body: str | None) -> dict:
    headers = {"Accept": "*/*", "Host": "127.0.0.1:8080", "User-Agent": "curl/8.5.0",
               "X-Forwarded-Proto": "http", "X-Forwarded-Port": "8080"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "123456", "resourcePath": resource, "httpMethod": method,
            "extendedRequestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "01/Jan/2030:00:00:00 +0000", "path": f"/Prod{path}", "accountId": "123456789012",
            "protocol": "HTTP/1.1", "stage": "Prod", "domainPrefix": "localhost", "requestTimeEpoch": 1893456000000,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "identity": {"sourceIp": "127.0.0.1",
            "userAgent": "curl/8.5.0"}, "domainName": "localhost", "apiId": "1234567890",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def main() -> None:
    EVENTS_DIR.mkdir(exist_ok=True)
    for name, case in CASES.items():
        (EVENTS_DIR / f"{name}.json").write_text(json.dumps(api_event(*case), indent=2) + "\n")


if __name__ == "__main__":
    main()
