"""devtools.local_api: SAM's API Gateway emulation with in-process handlers, against a fixture template."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools.local_api import LocalApi, allowed_host_names, create_local_api
from devtools.support.http import free_port

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests" / "fixtures" / "local_api" / "template.yaml"


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


def test_concurrent_requests_each_get_their_own_answer(api: LocalApi) -> None:
    # The echo keeps its event in a module shared by every copy of the handler, as Powertools'
    # resolver does; concurrent requests served by threads of one process answered each other's.
    def get(task_id: int) -> str:
        return echo(api, "GET", f"/api/v1/tasks/{task_id}?hold=0.005")["event"]["pathParameters"]["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(get, range(100)))
    assert ids == [str(task_id) for task_id in range(100)]


def test_shutdown_without_serving_does_not_hang() -> None:
    local_api = create_local_api(TEMPLATE, port=0)
    local_api.shutdown()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(local_api.url + "/health", timeout=2)


def test_init_error_is_a_502_and_the_next_invocation_tries_again(api: LocalApi) -> None:
    inits = int(os.environ.get("LOCAL_API_BROKEN_INITS", "0"))  # one when the API was created
    for _ in range(2):
        status, _, body = call(api, "GET", "/broken")
        assert (status, json.loads(body)) == (502, {"message": "Internal server error"})
    assert int(os.environ["LOCAL_API_BROKEN_INITS"]) == inits + 2


def test_a_handler_over_its_timeout_still_answers_and_is_reported(api: LocalApi, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="devtools.local_api"):
        assert echo(api, "GET", "/slow?hold=1.05")["context"]["function_name"] == "SlowFunction"
    assert "SlowFunction ran longer than its 1.0s timeout" in caplog.text


def test_handlers_are_loaded_before_the_first_request() -> None:
    local_api = create_local_api(TEMPLATE, port=0)
    try:
        assert "_local_api_EchoFunction_app" in sys.modules and "_local_api_SlowFunction_app" in sys.modules
    finally:
        local_api.shutdown()


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "localhost:1",
        "127.0.0.1.evil.example:{port}",
        "[::2]:{port}",
        "localhost.:{port}",
        "127.0.0.1:{port}:{port}",
    ],
)
def test_a_host_that_is_not_a_local_name_is_refused(api: LocalApi, host: str) -> None:
    status, headers, body = call(api, "GET", "/health", headers={"Host": host.format(port=api.url.rsplit(":", 1)[1])})
    assert (status, headers["Content-Type"]) == (403, "application/json")
    assert "is not this local run's" in json.loads(body)["error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "LOCALHOST:{port}", "localhost", "[::1]:{port}"])
def test_local_names_are_served(api: LocalApi, host: str) -> None:
    assert echo(api, "GET", "/health", headers={"Host": host.format(port=api.url.rsplit(":", 1)[1])})


def test_browser_requests_must_be_same_origin_and_json(api: LocalApi) -> None:
    own = api.url
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": own.replace("127.0.0.1", "127.0.0.2")},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": own},
        {"Origin": own, "Content-Type": "text/plain"},
        {"Sec-Fetch-Mode": "no-cors", "Content-Type": "multipart/form-data; boundary=x"},
    ]
    for headers in refused:
        status, _, body = call(api, "POST", "/api/v1/tasks", body=b"{}", headers=headers)
        assert (status, sorted(json.loads(body))) == (403, ["error"]), headers
    served = [
        {"Origin": own, "Content-Type": "application/json"},
        {
            "Origin": own.replace("127.0.0.1", "localhost"),
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/json; charset=utf-8",
        },
        {"Content-Type": "application/x-www-form-urlencoded"},  # curl -d: not a browser
        {"Content-Type": "text/plain"},
    ]
    for headers in served:
        assert echo(api, "POST", "/api/v1/tasks", body=b"{}", headers=headers)["event"]["body"] == "{}"
    assert echo(api, "GET", "/api/v1/tasks", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert echo(api, "GET", "/health", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})


def test_allowed_hosts_follow_the_address_listened_on() -> None:
    loopback = ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_host_names("127.0.0.1") == loopback
    assert allowed_host_names("0.0.0.0") == allowed_host_names("::") == loopback  # every interface: names unknown
    assert allowed_host_names("192.168.1.20") == [*loopback, "192.168.1.20"]
    assert allowed_host_names("fe80::1") == [*loopback, "[fe80::1]"]
    assert allowed_host_names("0.0.0.0", ["My-Laptop.local", "10.0.0.5"]) == [*loopback, "my-laptop.local", "10.0.0.5"]


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@contextlib.contextmanager
def pre_forked_server(
    folder: Path, processes: int, *, ignore_sigint: bool = False
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`python -m devtools.local_api --processes N` in its own process group, once all N answer;
    ignore_sigint starts it as a shell starts a background job (SIGINT ignored)."""
    port, console = free_port(), folder / "console.log"
    command = [
        sys.executable,
        "-m",
        "devtools.local_api",
        "--template",
        str(TEMPLATE),
        "--port",
        str(port),
        "--processes",
        str(processes),
    ]
    if ignore_sigint:
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    with console.open("wb") as output:
        server = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while len(_children(server.pid)) < processes or not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, console.read_text()
            time.sleep(0.1)
        yield server, url, console
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def console_records(console: Path) -> list[dict]:
    return [json.loads(line) for line in console.read_text().splitlines()]  # JSON lines only


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
def test_pre_forked_processes_are_replaced_and_finish_their_request_on_sigterm(tmp_path: Path) -> None:
    with pre_forked_server(tmp_path, 3) as (server, url, console):
        with ThreadPoolExecutor(max_workers=12) as pool:  # three at once, each in its own process
            ids = list(
                pool.map(
                    lambda n: _get_json(f"{url}/api/v1/tasks/{n}?hold=0.05")["event"]["pathParameters"]["id"], range(24)
                )
            )
        assert ids == [str(n) for n in range(24)]

        killed = min(_children(server.pid))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while killed in _children(server.pid) or len(_children(server.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(_get_json, f"{url}/api/v1/tasks/7?hold=1")
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            assert slow.result()["event"]["pathParameters"]["id"] == "7"  # finished, not cut off
        assert server.wait(10) == 0
    assert any(f"API process {killed} exited" in record["message"] for record in console_records(console))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
def test_ctrl_c_stops_every_process_and_restarts_none(tmp_path: Path) -> None:
    with pre_forked_server(tmp_path, 3) as (server, _, console):
        os.killpg(server.pid, signal.SIGINT)  # Ctrl+C signals the whole foreground process group
        assert server.wait(10) == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # no process of the group is left
    assert not [record for record in console_records(console) if "exited" in record["message"]]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
def test_server_processes_end_when_the_parent_is_killed_outright(tmp_path: Path) -> None:
    # A SIGKILLed `make run` (a closed terminal) must not leave servers, or engines, running.
    with pre_forked_server(tmp_path, 3) as (server, _, _console):
        servers = _children(server.pid)
        assert len(servers) == 3
        server.kill()
        server.wait(10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in servers):
            assert time.monotonic() < deadline, [pid for pid in servers if Path(f"/proc/{pid}").exists()]
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
def test_an_ignored_sigint_is_ignored_by_every_process(tmp_path: Path) -> None:
    # A background job: the server processes used to stop on SIGINT and the parent restarted them.
    with pre_forked_server(tmp_path, 3, ignore_sigint=True) as (server, url, console):
        serving = _children(server.pid)
        os.killpg(server.pid, signal.SIGINT)
        time.sleep(1)
        assert (_children(server.pid), _answers(url)) == (serving, True)
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    assert not [record for record in console_records(console) if "exited" in record["message"]]


def _answers(url: str) -> bool:
    try:
        return _get_json(f"{url}/health")["event"]["path"] == "/health"
    except OSError:
        return False


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
