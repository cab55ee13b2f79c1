"""The API when PostgreSQL goes away, is unreachable, or restarts under load.

This module runs its own throw-away server (not the session's), so it can stop and restart it.
The contract: a database outage is a 503 with a JSON {"error": ...} body, never a 500 or an
exception escaping the handler; once the database is back, requests succeed again without
restarting anything (broken pooled connections are replaced); nothing acknowledged is lost.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from atcore import config, db
from devtools.pgserver import EmbeddedPostgres
from devtools.support.database import empty_every_table, migrate_database, point_database_at
from devtools.support.functions import ROOT, invoke_raw, lambda_context, load_event

DATABASE = "at_faults"
FUTURE = "2099-01-01T12:00:00Z"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's basetemp: as root the server runs as another account, and a pytest run
    # starting meanwhile chmods /tmp/pytest-of-root back to 0700, locking that account out.
    shm = Path("/dev/shm")
    data_dir = Path(tempfile.mkdtemp(prefix="at-faults-pg-", dir=shm if shm.is_dir() else None))
    pg = EmbeddedPostgres(data_dir, durable=False)
    pg.start()
    try:
        pg.create_database(DATABASE)
        migrate_database(pg.connect(DATABASE))
        yield pg
    finally:
        db.reset()
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def point_at(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    point_database_at(monkeypatch, variables)


@pytest.fixture
def on_server(server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedPostgres]:
    """The code under test uses this module's server (running, table empty); env and caches restored after."""
    if not server.is_running():
        server.start()
    admin = server.connect(DATABASE)
    try:
        empty_every_table(admin)
    finally:
        admin.close()
    point_at(monkeypatch, **server.env(DATABASE))
    yield server
    # Runs before monkeypatch restores the environment: nothing reads the settings in between.
    db.reset()
    config.database_settings.cache_clear()


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """elsewhere(host, port, **more) points the code under test at some other address."""

    def point(host: str, port: int, **more: str) -> None:
        point_at(
            monkeypatch,
            DB_HOST=host,
            DB_PORT=str(port),
            DB_USER="postgres",
            DB_NAME=DATABASE,
            DB_SSLMODE="disable",
            **more,
        )

    yield point
    db.reset()
    config.database_settings.cache_clear()


def rows(server: EmbeddedPostgres, sql: str, **params) -> list:
    conn = server.connect(DATABASE)
    try:
        return conn.run(sql, **params)
    finally:
        conn.close()


# --- requests -----------------------------------------------------------------------------------


def create_event(**fields) -> dict:
    body = {"execute_at": FUTURE, "task_type": "fault_test", "payload": {"k": "v"}} | fields
    return load_event("create_task", body=json.dumps(body))


def get_event(task_id: int) -> dict:
    return load_event("get_task", path=f"/api/v1/tasks/{task_id}", pathParameters={"id": str(task_id)})


def list_event() -> dict:
    return load_event("list_tasks", queryStringParameters=None, multiValueQueryStringParameters=None)


def requests_of_every_kind(task_id: int = 1) -> list[tuple[str, dict]]:
    return [
        ("health", load_event("health")),
        ("create_task", create_event()),
        ("get_task", get_event(task_id)),
        ("list_tasks", list_event()),
        (
            "cancel_task",
            load_event("cancel_task", path=f"/api/v1/tasks/{task_id}", pathParameters={"id": str(task_id)}),
        ),
    ]


def call(function: str, event: dict, handler=None) -> tuple[int, dict, object]:
    """Invoke; returns (status, headers, body parsed as JSON when it is JSON)."""
    response = handler(event, lambda_context()) if handler else invoke_raw(function, event)
    body = response.get("body") or ""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():  # the REST API's format
        headers.setdefault(key.lower(), values[-1] if values else None)
    return response["statusCode"], headers, parsed


def assert_unavailable(function: str, event: dict) -> None:
    status, headers, body = call(function, event)
    assert status == 503, (function, status, body)
    assert headers.get("content-type") == "application/json", (function, headers)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (function, body)
    assert set(body) <= {"error", "details"}, body


def assert_working(task_id: int) -> None:
    assert call("health", load_event("health"))[::2] == (200, "OK")
    status, _, body = call("create_task", create_event())
    assert status == 201, body
    status, _, body = call("get_task", get_event(task_id))
    assert status == 200 and body["task"]["id"] == task_id, body
    status, _, body = call("list_tasks", list_event())
    assert status == 200 and task_id in [task["id"] for task in body["tasks"]], body


def pool_connections(count: int) -> None:
    """Leave `count` open connections idle in the pool, as concurrent callers (the local run) would."""
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(db.connection())


def idle_in_pool() -> int:
    return len(db._pool._idle)


# --- (a) the server stops, then comes back --------------------------------------------------------


def test_outage_answers_503_on_every_endpoint_and_recovery_needs_no_restart(on_server):
    status, _, body = call("create_task", create_event())
    assert status == 201, body
    task_id = body["task"]["id"]
    assert call("health", load_event("health"))[::2] == (200, "OK")
    assert idle_in_pool() == 1  # the connection the next request will find broken

    on_server.stop()
    for function, event in requests_of_every_kind(task_id) * 2:
        assert_unavailable(function, event)

    on_server.start()
    assert_working(task_id)
    assert rows(on_server, "SELECT count(*) FROM scheduled_tasks")[0][0] == 2


@pytest.mark.parametrize(
    "pooled, mode",
    [(1, "fast"), (4, "fast"), (1, "immediate")],
    ids=["one-pooled-like-lambda-fast", "four-pooled-fast", "one-pooled-crash"],
)
def test_after_a_restart_broken_pooled_connections_are_replaced_not_handed_out(on_server, pooled, mode):
    """Every warm Lambda keeps one pooled connection: after the database restarts (maintenance,
    failover, crash) the next request must get a fresh connection, not a 503 from the dead one."""
    status, _, body = call("create_task", create_event())
    assert status == 201, body
    task_id = body["task"]["id"]
    rows(on_server, "CHECKPOINT")  # this throw-away server runs with synchronous_commit=off: survive the crash
    pool_connections(pooled)
    assert idle_in_pool() == pooled

    on_server.restart(mode=mode)

    for function, event in [("health", load_event("health")), ("get_task", get_event(task_id))] * pooled:
        status, _, body = call(function, event)
        assert status == 200, (function, status, body)
    assert_working(task_id)


# --- (b) the server is not reachable --------------------------------------------------------------


def test_closed_port_answers_503_quickly(elsewhere):
    elsewhere("127.0.0.1", 1)
    began = time.monotonic()
    for function, event in requests_of_every_kind():
        assert_unavailable(function, event)
    assert time.monotonic() - began < 10


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port whose TCP handshake succeeds (the kernel accepts) but that never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_a_server_that_accepts_but_never_answers_is_503_within_the_connect_timeout(elsewhere, silent_listener):
    elsewhere("127.0.0.1", silent_listener, DB_CONNECT_TIMEOUT="0.5")
    began = time.monotonic()
    assert_unavailable("health", load_event("health"))
    # The connect timeout must bound the whole connection set-up (libpq's connect_timeout does),
    # not only the TCP handshake: the API Lambdas time out after 10 s.
    assert time.monotonic() - began < 10


@pytest.fixture
def hang_up_listener() -> Iterator[int]:
    """A port that accepts each connection and closes it at once (a proxy with no backend)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    sock.close()


def test_a_server_that_hangs_up_at_once_is_503(elsewhere, hang_up_listener):
    elsewhere("127.0.0.1", hang_up_listener, DB_CONNECT_TIMEOUT="2")
    began = time.monotonic()
    for function, event in requests_of_every_kind():
        assert_unavailable(function, event)
    assert time.monotonic() - began < 10


# --- the server stops answering in the middle of a request -------------------------------------------


def test_a_backend_that_freezes_mid_request_is_503_and_its_connection_is_replaced(on_server, monkeypatch):
    """A socket timeout while waiting for a result (server frozen, network partition) is the
    database being unavailable, like a refused connection: 503, not 500."""
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "500")
    config.database_settings.cache_clear()
    with db.connection() as conn:  # this connection stays in the pool; the next request gets it
        backend = conn.run("SELECT pg_backend_pid()")[0][0]
    assert idle_in_pool() == 1
    os.kill(backend, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert_unavailable("health", load_event("health"))
        assert time.monotonic() - began < 10
    finally:
        os.kill(backend, signal.SIGCONT)
    assert call("health", load_event("health"))[::2] == (200, "OK")
    with db.connection() as conn:
        assert conn.run("SELECT pg_backend_pid()")[0][0] != backend


# --- (c) a restart under load ---------------------------------------------------------------------


def execution_environment(function: str) -> object:
    """A separate copy of a function's module, as in its own Lambda execution environment.

    Powertools' resolver keeps per-request state on the app object (not thread-safe), so
    concurrent invocations of one module can answer each other's status codes; Lambda never
    runs two invocations in one environment at once. The layer (and its pool) is shared here.
    """
    spec = importlib.util.spec_from_file_location(
        f"at_env_{function}_{os.urandom(4).hex()}", ROOT / "functions" / function / "app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def test_restart_under_load_loses_nothing_acknowledged(on_server, monkeypatch):
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "5000")
    config.database_settings.cache_clear()
    assert call("create_task", create_event(payload={"warm": "up"}))[0] == 201

    threads_count, duration = 8, 3.0
    handlers = [execution_environment("create_task") for _ in range(threads_count)]
    results: list[tuple[float, float, int, object, str | None]] = []  # (sent, answered, status, body, ctype)
    lock, stop = threading.Lock(), threading.Event()
    failures: list[BaseException] = []

    def client(number: int) -> None:
        sequence = 0
        try:
            while not stop.is_set():
                sequence += 1
                sent = time.monotonic()
                event = create_event(payload={"client": number, "n": sequence})
                status, headers, body = call("create_task", event, handlers[number])
                with lock:
                    results.append((sent, time.monotonic(), status, body, headers.get("content-type")))
                if status != 201:
                    time.sleep(0.01)  # don't spin while the server is down
        except BaseException as exc:  # an exception escaping the handler is a failure
            failures.append(exc)

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads_count)]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    time.sleep(duration / 3)
    restarting = time.monotonic()
    on_server.restart(mode="fast")  # a clean shutdown: committed work survives despite synchronous_commit=off
    restarted = time.monotonic()
    time.sleep(max(duration - (restarted - began), 1.0))
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers), "a client hung"
    assert failures == []

    statuses = [status for _, _, status, _, _ in results]
    assert set(statuses) <= {201, 503}, sorted(set(statuses))
    for _, _, status, body, content_type in results:
        if status == 503:
            assert content_type == "application/json" and isinstance(body, dict) and body.get("error"), body
    acknowledged = [body["task"] for _, _, status, body, _ in results if status == 201]
    assert any(sent < restarting for sent, _, status, _, _ in results if status == 201), "no load before"
    assert any(sent > restarted for sent, _, status, _, _ in results if status == 201), "no recovery after"

    stored = {task_id: payload for task_id, payload in rows(on_server, "SELECT id, payload FROM scheduled_tasks")}
    ids = [task["id"] for task in acknowledged]
    assert len(ids) == len(set(ids))
    missing = [task_id for task_id in ids if task_id not in stored]
    assert missing == [], f"acknowledged with 201 but not stored: {missing}"
    assert all(stored[task["id"]] == task["payload"] for task in acknowledged)
    unavailable = statuses.count(503)
    # A 503 may still have committed (the connection broke after COMMIT); nothing else adds rows.
    assert len(ids) + 1 <= len(stored) <= len(ids) + 1 + unavailable


def test_connections_send_without_waiting_for_acks(database) -> None:
    # Nagle's algorithm held a large statement's last write ~40 ms for the server's delayed ACK
    # (a batch of 100 creates took 52 ms instead of 8).
    import socket

    from atcore import db

    with db.connection() as conn:
        assert conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
