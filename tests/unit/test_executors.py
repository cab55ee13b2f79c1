"""Pure logic of the executor registry: payload validation, error classification, destination safety.

Nothing here touches the network: name resolution is stubbed, and no AWS client is created.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atcore import env, executors
from atcore.executors import ExecutionError, aws, deadlines, execute, http_callback, known_task_types, safety, sqs
from atcore.executors import email as email_executor
from atcore.executors.payloads import parse_payload

LAYER = Path(__file__).resolve().parents[2] / "layers" / "common" / "python"


def stub_resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Replaces getaddrinfo: tests never look up a real name."""

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in answers[host]
        ]

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)


def failure(task_type: str, payload: object, task_id: int = 7) -> ExecutionError:
    with pytest.raises(ExecutionError) as caught:
        execute(task_id, task_type, payload, 1)
    return caught.value


# --- registry -------------------------------------------------------------------------------------


def test_known_task_types() -> None:
    assert known_task_types() == frozenset({"http_callback", "send_email", "email", "send_sms", "sqs_message"})


def test_unknown_task_type_is_not_retryable() -> None:
    error = failure("xyz", {})
    assert not error.retryable
    assert error.message.startswith("unknown task_type 'xyz'; known types: email, http_callback,")


def test_a_task_type_that_is_not_a_string_is_unknown() -> None:
    assert failure(None, {}).message.startswith("unknown task_type 'None'")  # type: ignore[arg-type]


def test_execution_error_carries_message_and_retryable() -> None:
    error = ExecutionError("boom")
    assert (error.message, error.retryable, str(error), error.detail) == ("boom", True, "boom", None)
    assert ExecutionError("no", retryable=False).retryable is False


def test_execution_error_detail_is_for_the_log_only() -> None:
    error = ExecutionError("callback returned HTTP 500", detail="response body: at db.internal:5432")
    assert error.detail == "response body: at db.internal:5432"
    for shown in (str(error), repr(error), *map(str, error.args)):
        assert "db.internal" not in shown


def test_importing_the_package_does_not_import_boto3() -> None:
    code = "import sys, atcore.executors as e; e.known_task_types(); assert 'boto3' not in sys.modules, 'boto3'"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(LAYER)}, timeout=60)


@pytest.mark.parametrize("task_type", sorted(executors.EXECUTORS))
def test_a_payload_that_is_not_an_object_is_rejected(task_type: str) -> None:
    error = failure(task_type, ["not", "an", "object"])
    assert (error.message, error.retryable) == ("payload: must be a JSON object", False)


# --- deadlines -------------------------------------------------------------------------------------


def test_the_attempt_deadline_is_the_sooner_of_the_callers_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "10")
    now = time.monotonic()
    assert now + 9.9 < deadlines.attempt_deadline(None) < now + 11
    assert deadlines.attempt_deadline(now + 3) == now + 3
    assert now + 9.9 < deadlines.attempt_deadline(now + 60) < now + 11
    with pytest.raises(ValueError):
        deadlines.attempt_deadline(float("nan"))


def test_remaining_time_is_never_zero() -> None:
    assert 0 < deadlines.remaining(time.monotonic() + 5) <= 5
    with pytest.raises(TimeoutError):
        deadlines.remaining(time.monotonic())


@pytest.mark.parametrize(
    ("seconds", "text"), [(10.0, "10"), (9.99996, "10"), (0.29999, "0.3"), (2.5, "2.5"), (123.4, "123"), (-1.0, "0")]
)
def test_seconds_text(seconds: float, text: str) -> None:
    assert deadlines.seconds_text(seconds) == text


@pytest.mark.parametrize("seconds_left", [60.0, 22.0, 10.0, 6.0, 4.0, 2.0, 1.0])
def test_aws_timeouts_fit_in_what_is_left(seconds_left: float) -> None:
    timeout, attempts = aws.timeout_profile(seconds_left)
    assert aws.worst_case_seconds(timeout, attempts) <= seconds_left
    assert (timeout, attempts) == aws.timeout_profile(seconds_left + 0.001)  # few profiles, so few clients


def test_an_aws_client_without_a_deadline_has_the_most_generous_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, float, int]] = []
    monkeypatch.setattr(
        aws, "_new_client", lambda service, timeout, attempts: made.append((service, timeout, attempts))
    )
    aws.reset_clients()
    aws.client("sqs")  # e.g. the dispatcher's task queue: no attempt deadline
    aws.client("sqs", time.monotonic() + 3)
    aws.reset_clients()
    assert made == [("sqs", 5.0, 2), ("sqs", 1.0, 1)]


def test_aws_timeouts_when_almost_nothing_is_left_are_the_smallest() -> None:
    assert aws.timeout_profile(0.2) == aws.timeout_profile(-5) == (0.5, 1)
    assert aws.timeout_profile(100) == (5.0, 2)  # never beyond the old fixed timeouts


# --- malformed payloads: non-retryable, the message names the field -----------------------------


@pytest.mark.parametrize(
    ("task_type", "payload", "expected"),
    [
        ("http_callback", {}, "payload.url: is required"),
        ("http_callback", {"url": "ftp://example.com/x"}, "payload.url: must be an http(s) URL"),
        ("http_callback", {"url": 42}, "payload.url: must be a string"),
        ("http_callback", {"url": "http://user:secret@example.com/"}, "payload.url: must not contain user information"),
        ("http_callback", {"url": "http:///nohost"}, "payload.url: must be an http(s) URL"),
        ("http_callback", {"url": "http://example.com:99999/"}, "payload.url: must be an http(s) URL with a valid"),
        ("http_callback", {"url": "http://exa mple.com/"}, "payload.url: must not contain spaces"),
        ("http_callback", {"url": "http://example.com/", "method": "TRACE"}, "payload.method: must be one of GET"),
        ("http_callback", {"url": "http://example.com/", "headers": {"Host": "x"}}, "payload.headers: header 'Host'"),
        (
            "http_callback",
            {"url": "http://example.com/", "headers": {"Idempotency-Key": "x"}},
            "payload.headers: header 'Idempotency-Key' is set by the scheduler",
        ),
        *(
            (
                "http_callback",
                {"url": "http://example.com/", "headers": {name: "v1,forged"}},
                f"payload.headers: header '{name}' is set by the scheduler",
            )
            # The Standard Webhooks headers (signing.py), and the rest of their namespace, in any case.
            for name in ("webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "webhook-anything")
        ),
        (
            "http_callback",
            {"url": "http://example.com/", "headers": {"X-A": "a\r\nX-B: b"}},
            "payload.headers: header 'X-A' has an invalid value",
        ),
        (
            "http_callback",
            {"url": "http://example.com/", "headers": {"X-A": "€uro"}},
            "payload.headers: header 'X-A' has an invalid value",
        ),
        ("http_callback", {"url": "http://a..b/"}, "payload.url: must have a valid host name"),
        (
            "http_callback",
            {"url": "http://example.com/", "headers": {"Bad Name": "v"}},
            "payload.headers: 'Bad Name' is not a valid header name",
        ),
        (
            "http_callback",
            {"url": "http://example.com/", "headers": {"X-A": 1}},
            "payload.headers.X-A: must be a string",
        ),
        ("send_email", {"subject": "s", "text": "t"}, "payload.to: is required"),
        ("send_email", {"to": [], "subject": "s", "text": "t"}, "payload.to: must have at least 1 item(s)"),
        (
            "send_email",
            {"to": "not-an-address", "subject": "s", "text": "t"},
            "payload.to[0]: must be an email address",
        ),
        ("send_email", {"to": "a@example.com", "subject": "s"}, "payload.text: at least one of text or html"),
        (
            "send_email",
            {"to": "a@example.com", "subject": "x" * 999, "text": "t"},
            "payload.subject: must be at most 998 characters",
        ),
        (
            "send_email",
            {"to": "a@example.com", "subject": "a\nBcc: x@evil.example", "text": "t"},
            "payload.subject: must be a single line",
        ),
        (
            "send_email",
            {"to": "a@example.com", "subject": "s", "text": "t", "body": "b"},
            "payload.body: give either text or body",
        ),
        (
            "send_email",
            {"to": [f"u{i}@example.com" for i in range(51)], "subject": "s", "text": "t"},
            "payload.to: must have at most 50 items",
        ),
        (
            "send_email",
            {"to": "a@example.com", "cc": [f"u{i}@example.com" for i in range(50)], "subject": "s", "text": "t"},
            "payload.to: at most 50 recipients in to, cc and bcc together",
        ),
        (
            "email",
            {"to": "a@example.com", "subject": "s", "text": "t", "reply_to": ["nope"]},
            "payload.reply_to[0]: must be an email address",
        ),
        ("send_sms", {"message": "hi"}, "payload.phone_number: is required"),
        ("send_sms", {"phone_number": "5551234567", "message": "hi"}, "payload.phone_number: must be an E.164"),
        ("send_sms", {"phone_number": "+15551234567", "message": ""}, "payload.message: must not be empty"),
        (
            "send_sms",
            {"phone_number": "+15551234567", "message": "x" * 1601},
            "payload.message: must be at most 1600 characters",
        ),
        (
            "send_sms",
            {"phone_number": "+15551234567", "message": "hi", "sender_id": "TOO-LONG-SENDER"},
            "payload.sender_id: must be 1-11 letters or digits",
        ),
        ("sqs_message", {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"}, "payload.body: is required"),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": ""},
            "payload.body: must not be empty",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "a\x00b"},
            "payload.body: contains characters SQS does not accept",
        ),
        ("sqs_message", {"queue_url": "not a url", "body": "x"}, "payload.queue_url: must be an http(s) SQS queue URL"),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x", "delay_seconds": 901},
            "payload.delay_seconds: must be at most 900",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x", "delay_seconds": True},
            "payload.delay_seconds: must be an integer",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x", "attributes": {"AWS.Trace": "v"}},
            "payload.attributes: 'AWS.Trace' is not a valid attribute",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q.fifo", "body": "x", "delay_seconds": 5},
            "payload.delay_seconds: is not supported by FIFO queues",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x", "deduplication_id": "d"},
            "payload.deduplication_id: is only accepted by FIFO queues",
        ),
        ("sqs_message", {"body": "x"}, "payload.queue_url: is required"),
    ],
)
def test_malformed_payloads_fail_without_retry(task_type: str, payload: dict, expected: str) -> None:
    error = failure(task_type, payload)
    assert not error.retryable
    assert error.message.startswith(expected), error.message


def test_email_without_any_sender_fails_without_retry() -> None:
    error = failure("send_email", {"to": "a@example.com", "subject": "s", "text": "t"})
    assert not error.retryable
    assert error.message.startswith("payload.from: is required")


def test_email_from_a_sender_the_deployment_does_not_allow_fails_without_retry(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AT_EMAIL_ALLOWED_FROM", "at@example.com,News <news@example.com>,")
    monkeypatch.setenv("AT_OUTBOX_DIR", str(tmp_path))
    email = {"to": "a@example.com", "subject": "s", "text": "t"}
    error = failure("send_email", email | {"from": "ceo@example.com"})
    assert not error.retryable
    assert (
        error.message
        == "payload.from: is not one of this deployment's allowed senders (EmailFrom, AllowedEmailSenders)"
    )
    # Display names and case do not matter: SES compares the bare address too.
    monkeypatch.setenv("AT_EMAIL_ALLOWED_FROM", "at@example.com,news@example.com")
    env.reset()
    for sender in ("AT <At@Example.com>", "news@example.com"):
        execute(1, "send_email", email | {"from": sender}, 1)


def test_many_validation_errors_are_summarised() -> None:
    error = failure("send_sms", {"phone_number": 1, "message": 2, "sender_id": 3, "extra": 4})
    assert error.message.count("payload.") == 3
    error = failure("send_email", {"to": 1, "subject": 2, "text": 3, "html": 4, "cc": 5})
    assert error.message.endswith("and 2 more")


# --- payload models --------------------------------------------------------------------------------


def test_http_callback_payload_defaults_and_normalises() -> None:
    callback = parse_payload(http_callback.HttpCallbackPayload, {"url": "https://example.com/hook", "data": {"a": 1}})
    assert (callback.method, callback.body()) == ("POST", b'{"a":1}')
    get = parse_payload(http_callback.HttpCallbackPayload, {"url": "http://example.com", "method": "get", "data": 1})
    assert (get.method, get.body()) == ("GET", None)
    assert parse_payload(http_callback.HttpCallbackPayload, {"url": "http://e.com", "unknown": 1}).body() is None


def test_body_with_an_unpaired_surrogate_is_still_json() -> None:
    callback = parse_payload(http_callback.HttpCallbackPayload, {"url": "http://e.com", "data": "a\ud800é"})
    assert callback.body() == b'"a\\ud800\\u00e9"'


def test_parse_callback_url() -> None:
    url = http_callback.parse_callback_url("HTTPS://Example.COM/a b?q=1#frag".replace(" ", "%20"))
    assert url == http_callback.CallbackUrl("https", "example.com", 443, "/a%20b?q=1")
    assert http_callback.parse_callback_url("http://[2001:db8::1]:8080").target == "/"
    assert http_callback.parse_callback_url("http://[2001:db8::1]:8080").host == "2001:db8::1"
    assert http_callback.parse_callback_url("http://example.com/ünï?x=é").target == "/%C3%BCn%C3%AF?x=%C3%A9"


def test_request_headers() -> None:
    headers = http_callback.request_headers(42, 3, {"content-type": "text/plain", "Authorization": "t"}, has_body=True)
    assert headers == {
        "User-Agent": "AT-scheduler/1",
        "Accept": "*/*",
        "content-type": "text/plain",
        "Authorization": "t",
        "Idempotency-Key": "at-task-42",
        "X-AT-Task-Id": "42",
        "X-AT-Attempt": "3",
    }
    assert "Content-Type" not in http_callback.request_headers(1, 1, {}, has_body=False)


def test_email_payload_accepts_body_alias_and_single_addresses() -> None:
    email = parse_payload(
        email_executor.EmailPayload,
        {
            "to": "Ann <ann@example.com>",
            "subject": "Hi",
            "body": "plain",
            "from": "at@example.com",
            "reply_to": "r@example.com",
        },
    )
    assert (email.to, email.text, email.sender, email.reply_to) == (
        ["Ann <ann@example.com>"],
        "plain",
        "at@example.com",
        ["r@example.com"],
    )
    request = email_executor.ses_request(email, "at@example.com")
    assert request["Content"]["Simple"]["Body"] == {"Text": {"Data": "plain", "Charset": "UTF-8"}}
    assert request["Destination"] == {"ToAddresses": ["Ann <ann@example.com>"]}


@pytest.mark.parametrize(
    ("body", "encoded"),
    [("as is", "as is"), ({"b": [1, "é"]}, '{"b":[1,"é"]}'), (5, "5"), (None, "null"), (True, "true")],
)
def test_sqs_body_encoding(body: object, encoded: str) -> None:
    assert sqs.encode_body(body) == encoded


def test_sqs_fifo_defaults_use_the_task_id() -> None:
    message = parse_payload(sqs.SqsPayload, {"queue_url": "https://sqs.example/1/jobs.fifo", "body": {"x": 1}})
    request = sqs.sqs_request(message, 99)
    assert request["MessageDeduplicationId"] == "at-task-99"
    assert request["MessageGroupId"] == "at-task-99"
    explicit = parse_payload(
        sqs.SqsPayload,
        {
            "queue_url": "https://sqs.example/1/jobs.fifo",
            "body": "x",
            "deduplication_id": "d1",
            "message_group_id": "g1",
        },
    )
    request = sqs.sqs_request(explicit, 99)
    assert (request["MessageDeduplicationId"], request["MessageGroupId"]) == ("d1", "g1")


def test_sqs_standard_queue_and_default_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_SQS_DEFAULT_QUEUE_URL", "https://sqs.example/1/jobs")
    message = parse_payload(sqs.SqsPayload, {"body": "x", "delay_seconds": 10, "attributes": {"kind": "demo"}})
    assert sqs.sqs_request(message, 1) == {
        "QueueUrl": "https://sqs.example/1/jobs",
        "MessageBody": "x",
        "DelaySeconds": 10,
        "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "demo"}},
    }


# --- http classification ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    http_callback.check_status(status, b"")


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),
        (302, False),
        (304, False),
        (307, False),
        (101, False),
    ],
)
def test_non_2xx_classification(status: int, retryable: bool) -> None:
    with pytest.raises(http_callback.CallbackStatusError) as caught:
        http_callback.check_status(status, b"")
    assert caught.value.retryable is retryable
    assert caught.value.http_status == status
    assert caught.value.message.startswith(f"callback returned HTTP {status}")


def test_the_response_body_is_not_in_the_message_and_only_its_start_in_the_detail() -> None:
    with pytest.raises(ExecutionError) as caught:
        http_callback.check_status(503, b"overloaded at db.internal:5432\n" + b"x" * 5000)
    assert caught.value.message == "callback returned HTTP 503"
    assert caught.value.detail is not None
    assert caught.value.detail.startswith("response body: overloaded at db.internal:5432 x")
    assert len(caught.value.detail) < 240
    with pytest.raises(ExecutionError, match=r"HTTP 302 \(redirects are not followed\)$"):
        http_callback.check_status(302, b"")


@pytest.mark.parametrize(
    ("exc", "message", "retryable"),
    [
        (TimeoutError("timed out"), "callback timed out after 10s", True),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "callback connection failed: [Errno 111] Connection refused",
            True,
        ),
        (
            http.client.RemoteDisconnected("Remote end closed connection without response"),
            "callback connection failed: Remote end closed connection without response",
            True,
        ),
        (http.client.BadStatusLine("junk"), "callback sent an invalid HTTP response: BadStatusLine", True),
        (
            ssl.SSLCertVerificationError(1, "certificate verify failed"),
            "callback TLS certificate verification failed",
            False,
        ),
    ],
)
def test_transport_error_classification(exc: Exception, message: str, retryable: bool) -> None:
    error = http_callback.transport_error(exc, 10.0)  # type: ignore[arg-type]
    assert error.message.startswith(message)
    assert error.retryable is retryable


def test_a_connection_error_keeps_only_its_errno_and_text() -> None:
    error = http_callback.transport_error(OSError(13, "Permission denied", "/var/task/secret.pem"), 10.0)
    assert error.message == "callback connection failed: [Errno 13] Permission denied"
    assert error.detail is not None and "/var/task/secret.pem" in error.detail


# --- destination safety ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata service"),
        ("fd00:ec2::254", "cloud metadata service"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("100.127.255.254", "shared address space (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.1.2.3", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("192.0.2.10", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::", "cloud metadata service"),
        ("64:ff9b::a00:1", "private"),
        ("fec0::1", "site-local"),
    ],
)
def test_non_public_addresses_are_blocked(address: str, reason: str) -> None:
    assert safety.blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e", "64:ff9b::808:808"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert safety.blocked_reason(ipaddress.ip_address(address)) is None


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_resolver(monkeypatch, {"mixed.example": ["8.8.8.8", "10.1.2.3"], "public.example": ["8.8.8.8", "1.1.1.1"]})
    with pytest.raises(ExecutionError) as caught:
        safety.vetted_addresses("mixed.example", 443)
    assert (
        caught.value.message == "callback destination refused: mixed.example resolves to a non-public address (private)"
    )
    assert caught.value.detail is not None and "10.1.2.3" in caught.value.detail  # the log line's, not the owner's
    assert not caught.value.retryable
    assert safety.vetted_addresses("public.example", 443) == ["8.8.8.8", "1.1.1.1"]


def test_private_destinations_can_be_allowed_for_local_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_resolver(monkeypatch, {"sink.local": ["127.0.0.1"]})
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "true")
    assert safety.vetted_addresses("sink.local", 80) == ["127.0.0.1"]


# What AT_HTTP_ALLOW_PRIVATE=1 can never open: the metadata service and link-local, in any spelling.
ALWAYS_REFUSED = [
    "169.254.169.254",
    "169.254.1.1",
    "169.254.170.2",
    "fe80::1",
    "fe80::a9fe:a9fe",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
    "::ffff:169.254.1.1",
    "::169.254.169.254",
    "2002:a9fe:a9fe::",
    "64:ff9b::a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:5601:5601",
]  # Teredo, client 169.254.169.254
# ... and on Lambda, where the runtime API and extensions listen on loopback, the local host either.
REFUSED_ON_LAMBDA = ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "2002:7f00:1::"]
ALLOWED_PRIVATE = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "fc00::1", "100.64.0.1", "::ffff:10.1.2.3", "8.8.8.8"]


LAMBDA_VARIABLES = {"AWS_LAMBDA_FUNCTION_NAME": "at-worker", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}
WHERE = pytest.mark.parametrize("where", [None, *LAMBDA_VARIABLES], ids=["local", *LAMBDA_VARIABLES])


def allow_private(monkeypatch: pytest.MonkeyPatch, where: str | None) -> None:
    """AT_HTTP_ALLOW_PRIVATE=1, locally (`where` None) or on Lambda (`where` names the variable it sets)."""
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    if where is not None:
        monkeypatch.setenv(where, LAMBDA_VARIABLES[where])
    env.reset()  # settings are read once per process, as on Lambda


def refusal(host: str) -> str:
    with pytest.raises(ExecutionError) as caught:
        safety.vetted_addresses(host, 80)
    assert not caught.value.retryable
    assert caught.value.message.startswith("callback destination refused:")
    return caught.value.message


@WHERE
@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_allowing_private_destinations_never_allows_metadata_or_link_local(
    monkeypatch: pytest.MonkeyPatch, address: str, where: str | None
) -> None:
    allow_private(monkeypatch, where)
    stub_resolver(monkeypatch, {"sneaky.example": ["10.0.0.1", address]})
    for host in (address, "sneaky.example"):
        assert refusal(host).endswith(("(cloud metadata service)", "(link-local)")), refusal(host)


@pytest.mark.parametrize("where", list(LAMBDA_VARIABLES))
@pytest.mark.parametrize("address", REFUSED_ON_LAMBDA)
def test_on_lambda_allowing_private_destinations_never_allows_loopback(
    monkeypatch: pytest.MonkeyPatch, address: str, where: str
) -> None:
    allow_private(monkeypatch, None)
    assert safety.vetted_addresses(address, 80) == [str(ipaddress.ip_address(address))]  # the local run: allowed
    allow_private(monkeypatch, where)
    assert refusal(address).endswith(("(loopback)", "(unspecified)")), refusal(address)


@WHERE
@pytest.mark.parametrize("address", ALLOWED_PRIVATE)
def test_allowing_private_destinations_allows_private_ranges_and_cgnat(
    monkeypatch: pytest.MonkeyPatch, address: str, where: str | None
) -> None:
    allow_private(monkeypatch, where)
    assert safety.vetted_addresses(address, 80) == [address]


def test_unresolvable_host_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_resolver(monkeypatch, {})
    error = failure("http_callback", {"url": "https://nowhere.example/hook"})
    assert error.retryable
    assert error.message.startswith("callback DNS lookup failed for 'nowhere.example'")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/",
        "http://[fd00:ec2::254]/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://internal.example/",
    ],
)
def test_refused_destinations_are_not_retryable(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host == "internal.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", port))]
        # The resolver's reading of numeric IPv4 forms (0x7f.1, 2130706433), with no resolver call.
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (socket.inet_ntoa(socket.inet_aton(host)), port))]

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)
    error = failure("http_callback", {"url": url})
    assert not error.retryable
    assert error.message.startswith("callback destination refused:"), error.message


# --- AWS -------------------------------------------------------------------------------------------


def test_aws_delivery_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    def set_env(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        env.reset()  # settings are read once per process, as on Lambda

    assert not aws.delivery_enabled("sesv2")
    set_env("AWS_ENDPOINT_URL_SNS", "http://127.0.0.1:4566")
    assert aws.delivery_enabled("sns") and not aws.delivery_enabled("sqs")
    assert aws.endpoint_url("sns") == "http://127.0.0.1:4566"
    set_env("AWS_ENDPOINT_URL_SES", "http://127.0.0.1:4567")
    assert aws.endpoint_url("sesv2") == "http://127.0.0.1:4567"
    set_env("AT_AWS_DELIVERY", "1")
    assert aws.delivery_enabled("sqs")


def client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": code, "Message": f"{code} happened"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "SendEmail")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("Throttling", 400, True),
        ("ThrottlingException", 400, True),
        ("TooManyRequestsException", 429, True),
        ("RequestThrottled", 403, True),
        ("KMSThrottlingException", 400, True),
        ("InternalFailure", 500, True),
        ("ServiceUnavailable", 503, True),
        ("SomethingNew", 502, True),
        ("MessageRejected", 400, False),
        ("AccessDenied", 403, False),
        ("AccessDeniedException", 403, False),
        ("InvalidParameter", 400, False),
        ("InvalidParameterValue", 400, False),
        ("ValidationError", 400, False),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, False),
        ("NotFoundException", 404, False),
    ],
)
def test_aws_client_error_classification(code: str, status: int, retryable: bool) -> None:
    error = aws.classify_error(client_error(code, status), "SES SendEmail")
    assert error.retryable is retryable
    assert error.message.startswith(f"SES SendEmail failed: {code}")
    assert "happened" not in error.message  # AWS's message is the log line's
    assert error.detail == f"HTTP {status}: {code} happened"


ROLE_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/at-worker-role/at-worker is not authorized to "
    "perform: {action} on resource: arn:aws:ses:us-east-1:123456789012:identity/example.com"
)


@pytest.mark.parametrize(
    ("task_type", "payload", "method", "code", "expected"),
    [
        (
            "send_email",
            {"to": "a@example.com", "subject": "s", "text": "t", "from": "at@example.com"},
            "send_email",
            "AccessDenied",
            "SES SendEmail failed: AccessDenied: the worker is not allowed to send from this address",
        ),
        (
            "send_email",
            {"to": "a@example.com", "subject": "s", "text": "t", "from": "at@example.com"},
            "send_email",
            "MessageRejected",
            "SES SendEmail failed: MessageRejected",
        ),
        (
            "send_sms",
            {"phone_number": "+15551234567", "message": "hi"},
            "publish",
            "AuthorizationError",
            "SNS Publish failed: AuthorizationError: the worker is not allowed to send SMS",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x"},
            "send_message",
            "AccessDenied",
            "SQS SendMessage failed: AccessDenied: the worker is not allowed to send to this queue",
        ),
        (
            "sqs_message",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "body": "x"},
            "send_message",
            "AWS.SimpleQueueService.NonExistentQueue",
            "SQS SendMessage failed: AWS.SimpleQueueService.NonExistentQueue: the queue does not exist",
        ),
    ],
)
def test_aws_failures_tell_the_owner_what_failed_and_log_the_rest(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    task_type: str,
    payload: dict,
    method: str,
    code: str,
    expected: str,
) -> None:
    from botocore.exceptions import ClientError

    aws_message = (
        ROLE_DENIED.format(action=method)
        if "Denied" in code or "Authorization" in code
        else (
            "Email address is not verified. The following identities failed the check in region US-EAST-1: "
            "at@example.com (account 123456789012)"
        )
    )

    class Client:
        def __getattr__(self, name: str) -> object:
            def call(**request: object) -> object:
                raise ClientError(
                    {
                        "Error": {"Code": code, "Message": aws_message},  # type: ignore[typeddict-item]
                        "ResponseMetadata": {"HTTPStatusCode": 400},
                    },
                    name,
                )

            return call

    monkeypatch.setenv("AT_AWS_DELIVERY", "1")
    monkeypatch.setattr(aws, "client", lambda service, *deadline: Client())
    error = failure(task_type, payload)
    assert error.message == expected
    assert not error.retryable
    for internal in ("123456789012", "arn:aws", "not verified", "identities"):
        assert internal not in error.message
    [record] = [r for r in caplog.records if r.getMessage() == "task execution failed"]
    assert record.error_detail == f"HTTP 400: {aws_message}"  # type: ignore[attr-defined]


def test_aws_errors_other_than_client_errors_keep_their_text_for_the_log() -> None:
    from botocore.exceptions import EndpointConnectionError, ParamValidationError

    error = aws.classify_error(
        EndpointConnectionError(endpoint_url="https://vpce-0abc.sns.us-east-1.vpce.amazonaws.com/"), "SNS Publish"
    )
    assert error.message == "SNS Publish failed: EndpointConnectionError"
    assert error.detail is not None and "vpce-0abc" in error.detail
    report = "Invalid length for parameter Message, value: my-private-text, valid min length: 1"
    error = aws.classify_error(ParamValidationError(report=report), "SNS Publish")
    assert error.message == "SNS Publish rejected the request: invalid parameter Message"
    assert "my-private-text" not in f"{error.message} {error.detail}"  # payload content is logged nowhere


def test_aws_transport_and_parameter_errors() -> None:
    from botocore.exceptions import (
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        ReadTimeoutError,
    )

    assert aws.classify_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "SNS Publish").retryable
    assert aws.classify_error(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "SNS Publish").retryable
    assert aws.classify_error(NoCredentialsError(), "SNS Publish").retryable
    assert aws.classify_error(RuntimeError("surprise"), "SNS Publish").retryable
    assert not aws.classify_error(ParamValidationError(report="bad"), "SNS Publish").retryable
    assert not aws.classify_error(NoRegionError(), "SNS Publish").retryable


def test_sdk_call_wraps_unexpected_exceptions() -> None:
    with pytest.raises(ExecutionError) as caught, aws.sdk_call("SQS SendMessage"):
        raise ValueError("odd")
    assert caught.value.retryable
    assert caught.value.message == "SQS SendMessage failed: ValueError"
    assert caught.value.detail == "odd"
