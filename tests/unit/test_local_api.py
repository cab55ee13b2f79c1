"""devtools.local_api: SAM's API Gateway emulation with in-process handlers, against a fixture template."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools.local_api import LocalApi, create_local_api

TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "local_api" / "template.yaml"


@pytest.fixture(scope="module")
def api() -> Iterator[LocalApi]:
    local_api = create_local_api(TEMPLATE, port=0).start()
    yield local_api
    local_api.shutdown()


def call(
    api: LocalApi, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(api.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def echo(api: LocalApi, method: str, path: str, **kwargs) -> dict:
    status, _, body = call(api, method, path, **kwargs)
    assert status == 200, body
    return json.loads(body)


def test_get_builds_the_rest_proxy_event(api: LocalApi) -> None:
    event = echo(api, "GET", "/api/v1/tasks/42?state=pending&tag=a&tag=b", headers={"X-Trace": "t-1"})["event"]

    assert event["httpMethod"] == "GET"
    assert event["path"] == "/api/v1/tasks/42"
    assert event["resource"] == "/api/v1/tasks/{id}"
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"state": "pending", "tag": "b"}
    assert event["multiValueQueryStringParameters"] == {"state": ["pending"], "tag": ["a", "b"]}
    assert event["headers"]["X-Trace"] == "t-1"
    assert event["multiValueHeaders"]["X-Trace"] == ["t-1"]
    assert event["headers"]["X-Forwarded-Port"] == api.url.rsplit(":", 1)[1]
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["httpMethod"] == "GET"
    assert context["resourcePath"] == "/api/v1/tasks/{id}"
    assert context["stage"] == "v1"
    assert context["requestId"]
    assert context["identity"]["sourceIp"] == "127.0.0.1"


def test_routes_without_path_parameters(api: LocalApi) -> None:
    event = echo(api, "GET", "/api/v1/tasks")["event"]
    assert event["resource"] == "/api/v1/tasks"
    assert event["pathParameters"] is None
    assert event["queryStringParameters"] is None
    assert echo(api, "DELETE", "/api/v1/tasks/7")["event"]["httpMethod"] == "DELETE"
    assert echo(api, "GET", "/health")["event"]["resource"] == "/health"


def test_each_request_gets_its_own_request_id(api: LocalApi) -> None:
    first, second = (echo(api, "GET", "/health") for _ in range(2))
    assert first["event"]["requestContext"]["requestId"] != second["event"]["requestContext"]["requestId"]
    assert first["context"]["aws_request_id"] != second["context"]["aws_request_id"]


def test_handler_gets_a_lambda_context(api: LocalApi) -> None:
    context = echo(api, "GET", "/health")["context"]
    assert context["function_name"] == "EchoFunction"
    assert context["memory_limit_in_mb"] == "256"
    assert context["invoked_function_arn"].endswith(":123456789012:function:EchoFunction")
    assert 0 < context["remaining_ms"] <= 10_000


def test_template_environment_is_not_applied(api: LocalApi) -> None:
    assert echo(api, "GET", "/health")["env_fixture_only"] is None


def test_post_body_is_passed_through(api: LocalApi) -> None:
    payload = '{"run_at": "2030-01-01T00:00:00Z", "action": {"type": "noop"}}'
    event = echo(api, "POST", "/api/v1/tasks", body=payload.encode(), headers={"Content-Type": "application/json"})[
        "event"
    ]
    assert event["body"] == payload
    assert event["isBase64Encoded"] is False
    assert event["headers"]["Content-Type"] == "application/json"


def test_non_json_text_body_is_passed_through(api: LocalApi) -> None:
    event = echo(api, "POST", "/api/v1/tasks", body=b"not json {", headers={"Content-Type": "text/plain"})["event"]
    assert event["body"] == "not json {"


def test_binary_media_type_body_is_base64_encoded(api: LocalApi) -> None:
    raw = bytes([0, 1, 2, 255])
    event = echo(api, "POST", "/api/v1/tasks", body=raw, headers={"Content-Type": "application/octet-stream"})["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_undecodable_text_body_reaches_the_function_with_replacement_characters(api: LocalApi) -> None:
    # SAM answers 502 here; API Gateway passes the text on, and so do we (the function decides).
    event = echo(api, "POST", "/api/v1/tasks", body=b"ok\xff\xfe", headers={"Content-Type": "text/plain"})["event"]
    assert event["body"] == "ok\ufffd\ufffd" and event["isBase64Encoded"] is False


def test_response_headers_and_base64_body_go_through_sam(api: LocalApi) -> None:
    status, headers, body = call(api, "GET", "/api/v1/tasks/1", headers={})
    assert (status, headers["X-Echo"], headers["Content-Type"]) == (200, "yes", "application/json")
    # A base64 body is decoded when the client accepts a binary media type of the Api (REST API rule).
    status, headers, body = call(api, "GET", "/api/v1/tasks?binary=1", headers={"Accept": "application/octet-stream"})
    assert (status, headers["Content-Type"], body) == (200, "application/octet-stream", bytes([0, 1, 2, 255]))


def test_unknown_route_or_method_is_a_403(api: LocalApi) -> None:
    for method, path in [("GET", "/api/v1/nothing"), ("PUT", "/api/v1/tasks"), ("GET", "/")]:
        status, _, body = call(api, method, path)
        assert (status, json.loads(body)) == (403, {"message": "Missing Authentication Token"})


def test_handler_exception_is_a_502(api: LocalApi) -> None:
    status, _, body = call(api, "GET", "/boom")
    assert (status, json.loads(body)) == (502, {"message": "Internal server error"})


def test_functions_without_api_events_are_never_loaded(api: LocalApi) -> None:
    echo(api, "GET", "/health")
    assert not [name for name in sys.modules if name.startswith("_local_api_WorkerFunction")]


def test_concurrent_requests_all_succeed(api: LocalApi) -> None:
    def get(task_id: int) -> str:
        return echo(api, "GET", f"/api/v1/tasks/{task_id}")["event"]["pathParameters"]["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(get, range(100)))
    assert ids == [str(task_id) for task_id in range(100)]


def test_shutdown_without_serving_does_not_hang() -> None:
    local_api = create_local_api(TEMPLATE, port=0)
    local_api.shutdown()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(local_api.url + "/health", timeout=2)
