"""Executors against hostile peers: one deadline per attempt, whatever the peer does.

Every server listens on 127.0.0.x (devtools/support/hostile_http.py); host names are resolved by a stub. The
timing assertions are generous on purpose (an attempt with a 1 s deadline must be over within 6 s):
they tell "ends at its deadline" from "runs for as long as the peer likes" (which was 15 s and more
here, the servers' own limit), not 1.0 s from 1.1 s.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from atcore.executors import ExecutionError, aws, execute, http_transport, safety
from devtools.support.aws import use_fake_credentials
from devtools.support.hostile_http import (
    BlackHole,
    HostileServer,
    drip_body,
    drip_headers,
    drip_status_line,
    flood,
    redirect,
    silent,
)
from devtools.support.http import free_port
from devtools.support.http_sink import HttpSink

DEADLINE = 1.0
MARGIN = 5.0  # what a busy 2-core machine may add to a deadline, generously


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "AT_AWS_DELIVERY",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SNS",
        "AWS_PROFILE",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_RUNTIME_API",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", str(DEADLINE))
    yield
    http_transport.close_idle_connections()
    aws.reset_clients()


def resolve_names_to(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """A stub resolver: the listed names map to the given IPs, IP literals stay numeric, nothing hits DNS."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        return [
            info
            for ip in answers.get(host, [host])
            for info in real_getaddrinfo(ip, port, socket.AF_INET, socket.SOCK_STREAM, 6, socket.AI_NUMERICHOST)
        ]

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)


def timed_failure(url: str, **execute_kwargs: object) -> tuple[ExecutionError, float]:
    started = time.monotonic()
    with pytest.raises(ExecutionError) as caught:
        execute(7, "http_callback", {"url": url, "data": {"n": 1}}, 1, **execute_kwargs)  # type: ignore[arg-type]
    return caught.value, time.monotonic() - started


# --- one deadline for the whole exchange -----------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    [drip_status_line, drip_headers, drip_body, silent],
    ids=["drips-status-line", "drips-headers", "drips-body", "never-answers"],
)
def test_a_peer_cannot_hold_an_attempt_past_its_deadline(behaviour) -> None:
    with HostileServer(behaviour) as server:
        error, elapsed = timed_failure(server.url())
    assert error.message == "callback timed out after 1s"
    assert error.retryable
    assert elapsed < DEADLINE + MARGIN, elapsed


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline() -> None:
    with HostileServer(silent) as server:
        error, elapsed = timed_failure(server.url(scheme="https"))
    assert (error.message, error.retryable) == ("callback timed out after 1s", True)
    assert elapsed < DEADLINE + MARGIN, elapsed


def test_the_callers_deadline_wins_when_it_is_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "30")
    with HostileServer(drip_headers) as server:
        error, elapsed = timed_failure(server.url(), deadline=time.monotonic() + 0.5)
    assert (error.message, error.retryable) == ("callback timed out after 0.5s", True)
    assert elapsed < 0.5 + MARGIN, elapsed


def test_an_attempt_whose_deadline_has_passed_is_not_started() -> None:
    with HostileServer(silent) as server:
        error, _ = timed_failure(server.url(), deadline=time.monotonic() - 1)
        assert server.connections == 0
    assert error.retryable
    assert error.message == "attempt not started: its deadline had already passed"


def test_a_resolver_that_never_answers_costs_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def stuck_getaddrinfo(*args: object, **kwargs: object) -> list:
        released.wait(15)  # a dead DNS server (getaddrinfo has no timeout of its own)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(safety.socket, "getaddrinfo", stuck_getaddrinfo)
    try:
        error, elapsed = timed_failure("http://stuck.test/hook")
    finally:
        released.set()
    assert (error.message, error.retryable) == ("callback timed out after 1s", True)
    assert elapsed < DEADLINE + MARGIN, elapsed


def test_a_timed_out_attempt_leaves_the_thread_able_to_call_others() -> None:
    with HostileServer(drip_headers) as server:
        timed_failure(server.url())
    with HttpSink() as sink:
        execute(8, "http_callback", {"url": sink.url}, 1)
        execute(9, "http_callback", {"url": sink.url}, 1)
    assert [a.task_id for a in sink.arrivals] == [8, 9]


# --- several addresses -----------------------------------------------------------------------------


def test_black_holed_addresses_cannot_starve_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two addresses never answer a SYN; the third is a real receiver. Each try gets its
    share of the deadline, so the third is reached in time (before: a full timeout per address)."""
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "3")
    with HttpSink() as sink:
        port = int(sink.url.split(":")[2].split("/")[0])
        with BlackHole("127.0.0.2", port), BlackHole("127.0.0.3", port):
            resolve_names_to(monkeypatch, {"multi.test": ["127.0.0.2", "127.0.0.3", "127.0.0.1"]})
            started = time.monotonic()
            execute(5, "http_callback", {"url": f"http://multi.test:{port}/hook"}, 1)
            elapsed = time.monotonic() - started
    assert [a.task_id for a in sink.arrivals] == [5]
    assert elapsed < 3 + 2, elapsed  # it used to take 6 s and more: 3 s per black-holed address


def test_a_host_whose_addresses_are_all_black_holed_costs_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "2")
    port = free_port()  # nothing listens there
    holes = [BlackHole(f"127.0.0.{n}", port) for n in (2, 3, 4, 5)]
    try:
        resolve_names_to(monkeypatch, {"void.test": [f"127.0.0.{n}" for n in (2, 3, 4, 5)]})
        error, elapsed = timed_failure(f"http://void.test:{port}/hook")
    finally:
        for hole in holes:
            hole.__exit__()
    assert (error.message, error.retryable) == ("callback timed out after 2s", True)
    assert elapsed < 2 + 2, elapsed  # it used to take 8 s: 2 s per address


# --- answers that are not what we asked for --------------------------------------------------------


def test_a_megabyte_answer_is_not_read_beyond_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server sends 1 MiB of a 64 MiB body, then stalls: reading past the 64 KiB cap would wait
    for the deadline (30 s here); the attempt must succeed at once instead."""
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "30")
    with HostileServer(flood(200)) as server:
        started = time.monotonic()
        execute(7, "http_callback", {"url": server.url()}, 1)
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed


def test_a_megabyte_error_answer_is_not_read_beyond_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "30")
    with HostileServer(flood(503)) as server:
        error, elapsed = timed_failure(server.url())
    assert error.message.startswith("callback returned HTTP 503")
    assert error.retryable
    assert len(error.message) < 240
    assert elapsed < 5, elapsed


def test_a_redirect_is_not_followed() -> None:
    with HostileServer(silent) as elsewhere, HostileServer(redirect(elsewhere.url("/stolen"))) as server:
        error, _ = timed_failure(server.url())
        assert elsewhere.connections == 0
    assert error.message == "callback returned HTTP 302 (redirects are not followed)"
    assert not error.retryable


# --- AWS executors ---------------------------------------------------------------------------------


def test_an_aws_endpoint_that_never_answers_ends_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's own timeouts (5 s per read, two attempts) used to make this 11 s; now they are
    chosen to fit in what is left of the attempt."""
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "2")
    with HostileServer(silent) as endpoint:
        use_fake_credentials(monkeypatch, AWS_ENDPOINT_URL_SNS=endpoint.url(""))
        started = time.monotonic()
        with pytest.raises(ExecutionError) as caught:
            execute(1, "send_sms", {"phone_number": "+15551234567", "message": "hi"}, 1)
        elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert caught.value.message.startswith("SNS Publish failed: ReadTimeoutError")
    assert elapsed < 2 + MARGIN, elapsed
