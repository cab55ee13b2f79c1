"""Executors against real-shaped peers: an HTTP(S) sink on 127.0.0.1, AWS through moto, the outbox.

No traffic leaves 127.0.0.1: the sinks listen there, host names are resolved by a stub, and AWS calls
are answered in-process by moto (fake credentials, us-east-1).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atcore import env
from atcore.executors import ExecutionError, aws, execute, http_transport, safety, signing
from devtools.support.aws import use_fake_credentials
from devtools.support.http_sink import Arrival, HttpSink, Reply

SENDER = "at@example.com"


# --- environment -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # Every AT_*/AWS_* variable the settings read is unset by tests/conftest.py's fresh_settings.
    monkeypatch.setenv("AT_OUTBOX_DIR", str(tmp_path / "outbox"))
    yield
    http_transport.close_idle_connections()
    aws.reset_clients()


def resolve_names_to(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    """A stub resolver: the listed names map to the given IPs, IP literals stay numeric, nothing hits DNS."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        return real_getaddrinfo(
            answers.get(host, host), port, socket.AF_UNSPEC, socket.SOCK_STREAM, 6, socket.AI_NUMERICHOST
        )

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)


# --- the HTTP sink ---------------------------------------------------------------------------------


def routes(arrival: Arrival) -> Reply:
    """What the sink answers, by path: /status/N, /redirect, /slow (1 s), anything else 200."""
    route = arrival.path.split("?", 1)[0]
    if route.startswith("/status/"):
        return Reply(int(route.rsplit("/", 1)[1]), b"upstream says no " * 40)
    if route == "/redirect":
        return Reply(302, b"", {"Location": "/hook"})
    if route == "/slow":
        time.sleep(1.0)
        return Reply(200, b"late")
    return Reply(200, b'{"ok":true}')


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    with HttpSink(routes) as started:
        yield started


def callback(url: str, task_id: int = 7, attempt: int = 1, **payload: object) -> None:
    execute(task_id, "http_callback", {"url": url, **payload}, attempt)


def callback_failure(url: str, **payload: object) -> ExecutionError:
    with pytest.raises(ExecutionError) as caught:
        callback(url, **payload)
    return caught.value


# --- http_callback ---------------------------------------------------------------------------------


def test_post_sends_json_and_idempotency_headers(sink: HttpSink) -> None:
    callback(
        sink.url_for("/hook?x=1"),
        task_id=42,
        attempt=2,
        data={"hello": "wörld"},
        headers={"Authorization": "Bearer s3cret"},
    )
    [request] = sink.arrivals
    assert (request.method, request.path) == ("POST", "/hook?x=1")
    assert json.loads(request.body) == {"hello": "wörld"}
    assert request.headers["Idempotency-Key"] == "at-task-42"
    assert request.headers["X-AT-Task-Id"] == "42"
    assert request.headers["X-AT-Attempt"] == "2"
    assert request.headers["User-Agent"] == "AT-scheduler/1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Host"] == f"127.0.0.1:{sink.port}"


@pytest.mark.parametrize("method", ["get", "PUT", "Patch", "DELETE"])
def test_every_method(sink: HttpSink, method: str) -> None:
    callback(sink.url_for("/hook"), method=method, data=[1, 2])
    [request] = sink.arrivals
    assert request.method == method.upper()
    assert request.body == (b"" if method == "get" else b"[1,2]")
    assert ("Content-Type" in request.headers) is (method != "get")


def test_the_same_idempotency_key_on_every_attempt(sink: HttpSink) -> None:
    for attempt in (1, 2, 3):
        callback(sink.url_for("/hook"), task_id=9, attempt=attempt)
    assert {r.headers["Idempotency-Key"] for r in sink.arrivals} == {"at-task-9"}
    assert [r.headers["X-AT-Attempt"] for r in sink.arrivals] == ["1", "2", "3"]


def test_server_error_is_retryable(sink: HttpSink, caplog: pytest.LogCaptureFixture) -> None:
    error = callback_failure(sink.url_for("/status/500"))
    assert error.retryable
    assert error.message == "callback returned HTTP 500"  # the receiver's body is not the task owner's to read
    [record] = [r for r in caplog.records if r.getMessage() == "task execution failed"]
    assert record.error_detail.startswith("response body: upstream says no")  # type: ignore[attr-defined]
    assert len(record.error_detail) <= 240  # type: ignore[attr-defined]


def test_failures_never_reveal_headers_or_query_strings(sink: HttpSink, caplog: pytest.LogCaptureFixture) -> None:
    error = callback_failure(
        sink.url_for("/status/500?token=query-secret"),
        data={"card": "payload-secret"},
        headers={"Authorization": "Bearer header-secret"},
    )
    [record] = [r for r in caplog.records if r.getMessage() == "task execution failed"]
    logged = repr(record.__dict__)
    assert "callback returned HTTP 500" in logged
    for secret in ("query-secret", "payload-secret", "header-secret"):
        assert secret not in error.message
        assert secret not in logged


@pytest.mark.parametrize("status", [408, 429, 503])
def test_retryable_statuses(sink: HttpSink, status: int) -> None:
    assert callback_failure(sink.url_for(f"/status/{status}")).retryable


def test_not_found_is_not_retryable(sink: HttpSink) -> None:
    error = callback_failure(sink.url_for("/status/404"))
    assert not error.retryable
    assert error.message.startswith("callback returned HTTP 404")


def test_redirect_is_not_followed_and_not_retryable(sink: HttpSink) -> None:
    error = callback_failure(sink.url_for("/redirect"))
    assert not error.retryable
    assert error.message == "callback returned HTTP 302 (redirects are not followed)"
    assert [r.path for r in sink.arrivals] == ["/redirect"]


def test_slow_sink_times_out_retryably(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_TIMEOUT_SECONDS", "0.3")
    started = time.monotonic()
    error = callback_failure(sink.url_for("/slow"))
    assert time.monotonic() - started < 0.9
    assert error.retryable
    assert error.message == "callback timed out after 0.3s"


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    error = callback_failure(f"http://127.0.0.1:{port}/")
    assert error.retryable
    assert error.message.startswith("callback connection failed:")


def test_keep_alive_connection_is_reused(sink: HttpSink) -> None:
    for task_id in range(20):
        callback(sink.url_for("/hook"), task_id=task_id)
    assert len(sink.arrivals) == 20
    assert sink.connections_opened == 1


def test_error_responses_keep_the_connection(sink: HttpSink) -> None:
    for path in ("/status/500", "/status/404", "/redirect", "/hook"):
        try:
            callback(sink.url_for(path))
        except ExecutionError:
            pass
    assert sink.connections_opened == 1


def test_recovers_when_the_server_closed_an_idle_connection(sink: HttpSink) -> None:
    callback(sink.url_for("/hook"))
    sink.close_idle_connections()
    callback(sink.url_for("/hook"))
    assert len(sink.arrivals) == 2
    assert sink.connections_opened == 2


def test_reconnects_once_when_a_stale_connection_fails_on_use(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the idle check cannot see: the server closes just before the request goes out."""
    callback(sink.url_for("/hook"))
    monkeypatch.setattr(http_transport, "_is_still_open", lambda connection: True)
    sink.close_idle_connections()
    callback(sink.url_for("/hook"))
    assert len(sink.arrivals) == 2
    assert sink.connections_opened == 2


def test_connects_to_the_vetted_ip_with_the_original_host_header(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_names_to(monkeypatch, {"sink.test": "127.0.0.1"})
    callback(sink.url_for(host="sink.test"))
    assert sink.arrivals[0].headers["Host"] == f"sink.test:{sink.port}"


def test_ipv6_literal_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    try:
        sink6 = HttpSink(routes, ipv6=True)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with sink6:
        callback(f"http://[::1]:{sink6.port}/v6")
        assert sink6.arrivals[0].headers["Host"] == f"[::1]:{sink6.port}"


# --- destination safety ----------------------------------------------------------------------------


@pytest.fixture
def unprotected_sink() -> Iterator[HttpSink]:
    """A sink on 127.0.0.1 while AT_HTTP_ALLOW_PRIVATE is unset: nothing may reach it."""
    with HttpSink(routes) as started:
        yield started


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1 is not a public address (loopback)"),
        ("http://10.0.0.1/hook", "10.0.0.1 is not a public address (private)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is not a public address (cloud metadata service)",
        ),
        ("http://[::1]:{port}/hook", "::1 is not a public address (loopback)"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is not a public address (cloud metadata service)"),
        ("http://100.64.1.1/", "100.64.1.1 is not a public address (shared address space (CGNAT))"),
        ("http://localhost:{port}/hook", "localhost resolves to a non-public address (loopback)"),
        ("https://internal.test:{port}/hook", "internal.test resolves to a non-public address (private)"),
        ("http://rebind.test:{port}/hook", "rebind.test resolves to a non-public address (loopback)"),
    ],
)
def test_private_destinations_are_refused(
    unprotected_sink: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, url: str, reason: str
) -> None:
    real_getaddrinfo = socket.getaddrinfo
    answers = {"localhost": ["127.0.0.1"], "internal.test": ["10.9.8.7"], "rebind.test": ["8.8.8.8", "127.0.0.1"]}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        ips = answers.get(host, [host])
        return [
            info
            for ip in ips
            for info in real_getaddrinfo(ip, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 6, socket.AI_NUMERICHOST)
        ]

    monkeypatch.setattr(safety.socket, "getaddrinfo", getaddrinfo)
    error = callback_failure(url.format(port=unprotected_sink.port))
    assert not error.retryable
    assert error.message == f"callback destination refused: {reason}"
    assert unprotected_sink.connections_opened == 0
    host = url.split("/")[2].rsplit(":", 1)[0].strip("[]")
    if host in answers:  # a name: its addresses are for the log line, not for the task's owner
        [record] = [r for r in caplog.records if r.getMessage() == "task execution failed"]
        for address in answers[host]:
            assert address not in error.message
            assert address in record.error_detail  # type: ignore[attr-defined]


@pytest.mark.parametrize("variable", ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_RUNTIME_API"])
def test_on_lambda_loopback_stays_refused_when_private_destinations_are_allowed(
    unprotected_sink: HttpSink, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The Lambda runtime API and extensions listen on loopback: a task must not reach them."""
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    monkeypatch.setenv(variable, "127.0.0.1:9001" if variable.endswith("API") else "at-worker")
    resolve_names_to(monkeypatch, {"localhost": "127.0.0.1"})
    for url in (
        unprotected_sink.url_for("/hook"),
        unprotected_sink.url_for(host="localhost"),
        unprotected_sink.url_for(host="[::1]"),
    ):
        error = callback_failure(url)
        assert not error.retryable
        assert error.message.startswith("callback destination refused:")
        assert error.message.endswith("(loopback)")
    assert unprotected_sink.connections_opened == 0
    monkeypatch.delenv(variable)
    env.reset()  # settings are read once per process, as on Lambda
    callback(unprotected_sink.url_for("/hook"))  # the local run: allowed
    assert unprotected_sink.connections_opened == 1


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "cloud metadata service"),
        ("[fd00:ec2::254]", "cloud metadata service"),
        ("[::ffff:169.254.169.254]", "cloud metadata service"),
        ("169.254.170.2", "link-local"),
        ("metadata.test", "cloud metadata service"),
    ],
)
def test_metadata_and_link_local_stay_refused_when_private_destinations_are_allowed(
    monkeypatch: pytest.MonkeyPatch, host: str, reason: str
) -> None:
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    resolve_names_to(monkeypatch, {"metadata.test": "169.254.169.254"})
    error = callback_failure(f"http://{host}/latest/meta-data/iam/security-credentials/")
    assert not error.retryable
    assert error.message.startswith("callback destination refused:")
    assert error.message.endswith(f"({reason})")


# --- https -----------------------------------------------------------------------------------------


@dataclass
class Certificates:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a server certificate for sink.test (cryptography comes with moto)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("AT test CA"))
        .issuer_name(name("AT test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(name("sink.test"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sink.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificates(ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file)


@pytest.fixture
def tls_sink(certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificates.cert_file, certificates.key_file)
    client_context = ssl.create_default_context(cadata=certificates.ca_pem.decode())
    monkeypatch.setattr(http_transport, "tls_context", lambda: client_context)
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    resolve_names_to(monkeypatch, {"sink.test": "127.0.0.1", "other.test": "127.0.0.1"})
    with HttpSink(routes, tls_context=server_context) as started:
        yield started


def test_https_verifies_the_original_host_name(tls_sink: HttpSink) -> None:
    callback(tls_sink.url_for(host="sink.test"))
    callback(tls_sink.url_for(host="sink.test"))
    assert tls_sink.server_names == ["sink.test"]  # SNI, once: the connection was kept alive
    assert tls_sink.arrivals[0].headers["Host"] == f"sink.test:{tls_sink.port}"
    assert tls_sink.connections_opened == 1


def test_https_certificate_for_another_host_fails_without_retry(tls_sink: HttpSink) -> None:
    error = callback_failure(tls_sink.url_for(host="other.test"))
    assert not error.retryable
    assert error.message.startswith("callback TLS certificate verification failed: Hostname mismatch")
    assert tls_sink.arrivals == []


# --- AWS through moto ------------------------------------------------------------------------------


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from moto import mock_aws

    use_fake_credentials(monkeypatch, AT_AWS_DELIVERY="1")
    with mock_aws():
        yield
    aws.reset_clients()  # clients made inside the mock must not outlive it


def boto_client(service: str):
    import boto3

    return boto3.client(service, region_name="us-east-1")


def test_email_is_sent_through_ses(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    boto_client("sesv2").create_email_identity(EmailIdentity=SENDER)
    monkeypatch.setenv("AT_EMAIL_FROM", SENDER)
    execute(
        5,
        "send_email",
        {
            "to": ["ann@example.com", "bob@example.com"],
            "subject": "Reminder",
            "text": "It is time.",
            "cc": "cat@example.com",
        },
        1,
    )
    execute(6, "email", {"to": "ann@example.com", "subject": "Alias", "body": "plain", "html": "<b>hi</b>"}, 1)
    statistics = boto_client("ses").get_send_statistics()["SendDataPoints"]
    assert sum(point["DeliveryAttempts"] for point in statistics) == 4  # recipients
    sent = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    assert [(m.source, m.subject, m.body) for m in sent] == [
        (SENDER, "Reminder", "It is time."),
        (SENDER, "Alias", "<b>hi</b>"),
    ]
    assert sent[0].destinations["ToAddresses"] == ["ann@example.com", "bob@example.com"]
    assert sent[0].destinations["CcAddresses"] == ["cat@example.com"]


def test_ses_rejection_is_not_retryable(moto_aws: None, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ExecutionError) as caught:
        execute(
            5, "send_email", {"to": "ann@example.com", "subject": "s", "text": "t", "from": "unverified@example.com"}, 1
        )
    assert not caught.value.retryable
    assert caught.value.message == "SES SendEmail failed: MessageRejected"  # not the identity's verification state
    [record] = [r for r in caplog.records if r.getMessage() == "task execution failed"]
    assert "not verified" in record.error_detail  # type: ignore[attr-defined]


def test_sms_is_published_through_sns(moto_aws: None) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    execute(8, "send_sms", {"phone_number": "+15551234567", "message": "Your table is ready", "sender_id": "ATdemo"}, 1)
    assert list(sns_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sms_messages.values()) == [
        ("+15551234567", "Your table is ready")
    ]


def test_sqs_message_reaches_the_queue(moto_aws: None) -> None:
    sqs = boto_client("sqs")
    queue_url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    execute(
        11,
        "sqs_message",
        {"queue_url": queue_url, "body": {"job": "report", "n": 1}, "attributes": {"kind": "demo"}},
        1,
    )
    execute(12, "sqs_message", {"queue_url": queue_url, "body": "plain text"}, 1)
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"
    ]
    assert {m["Body"] for m in messages} == {'{"job":"report","n":1}', "plain text"}
    with_attributes = next(m for m in messages if m["Body"].startswith("{"))
    assert with_attributes["MessageAttributes"]["kind"]["StringValue"] == "demo"


def test_sqs_fifo_deduplicates_by_task_id(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto_client("sqs")
    queue_url = sqs.create_queue(QueueName="jobs.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    monkeypatch.setenv("AT_SQS_DEFAULT_QUEUE_URL", queue_url)
    execute(21, "sqs_message", {"body": "first try"}, 1)
    execute(21, "sqs_message", {"body": "second try"}, 2)  # a retry after an unknown outcome
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])[
        "Messages"
    ]
    assert [m["Body"] for m in messages] == ["first try"]
    assert messages[0]["Attributes"]["MessageDeduplicationId"] == "at-task-21"
    assert messages[0]["Attributes"]["MessageGroupId"] == "at-task-21"


def test_missing_queue_is_not_retryable(moto_aws: None) -> None:
    with pytest.raises(ExecutionError) as caught:
        execute(
            1, "sqs_message", {"queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/nope", "body": "x"}, 1
        )
    assert not caught.value.retryable
    assert caught.value.message.startswith("SQS SendMessage failed:")


def test_unreachable_aws_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    use_fake_credentials(monkeypatch, AWS_ENDPOINT_URL_SNS=f"http://127.0.0.1:{port}")
    with pytest.raises(ExecutionError) as caught:
        execute(1, "send_sms", {"phone_number": "+15551234567", "message": "hi"}, 1)
    assert caught.value.retryable
    assert caught.value.message == "SNS Publish failed: EndpointConnectionError"  # the endpoint URL is the log's
    assert f"127.0.0.1:{port}" in (caught.value.detail or "")


# --- signed callbacks (Standard Webhooks), checked by a verifier no one here wrote ---------------


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


def verify(secret: str, arrival: Arrival) -> None:
    """As a receiver does: the raw body and the headers received, through PyPI's `standardwebhooks`."""
    from standardwebhooks.webhooks import Webhook

    Webhook(secret).verify(arrival.body, arrival.headers, json_parse=False)


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of AT's own logs, extra fields included. (botocore's DEBUG log, off unless asked
    for, writes out every response body: the database password's and this secret's alike.)"""
    return repr([r.__dict__ for r in caplog.records if not r.name.startswith(("botocore", "boto3", "urllib3"))])


def test_a_signed_callback_verifies_and_its_id_is_the_idempotency_key(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    callback(sink.url_for("/hook"), task_id=42, data={"hello": "wörld ✓ 日本語"})
    [arrival] = sink.arrivals
    verify(secret, arrival)
    assert arrival.body == '{"hello":"wörld ✓ 日本語"}'.encode()  # UTF-8 as sent, and signed so
    assert arrival.headers["webhook-id"] == arrival.headers["Idempotency-Key"] == "at-task-42"
    assert abs(int(arrival.headers["webhook-timestamp"]) - arrival.at) < 2


@pytest.mark.parametrize(
    ("method", "data", "body"),
    [("GET", {"not": "sent"}, b""), ("POST", None, b""), ("DELETE", [1, 2], b"[1,2]"), ("PATCH", "é", b'"\xc3\xa9"')],
)
def test_every_method_verifies_an_empty_body_included(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch, method: str, data: object, body: bytes
) -> None:
    secret = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    callback(sink.url_for("/hook"), method=method, data=data)
    [arrival] = sink.arrivals
    assert (arrival.method, arrival.body) == (method, body)
    verify(secret, arrival)


def test_two_secrets_each_verify_alone(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = new_secret(24), new_secret(64)
    monkeypatch.setenv("AT_WEBHOOK_SECRET", f"{old} {new}")
    callback(sink.url_for("/hook"), data={"n": 1})
    [arrival] = sink.arrivals
    assert len(arrival.headers["webhook-signature"].split(" ")) == 2
    verify(old, arrival)
    verify(new, arrival)


def test_every_attempt_has_the_same_id_and_its_own_timestamp(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    real_time = time.time
    windows = []
    for attempt, later in ((1, 0.0), (2, 7.0), (3, 130.0)):  # retries come seconds to minutes apart
        monkeypatch.setattr(time, "time", lambda later=later: real_time() + later)
        before = int(time.time())
        callback(sink.url_for("/hook"), task_id=9, attempt=attempt, data={"n": 1})
        windows.append((before, int(time.time())))
    monkeypatch.setattr(time, "time", real_time)
    assert [a.attempt for a in sink.arrivals] == [1, 2, 3]
    assert {a.headers["webhook-id"] for a in sink.arrivals} == {"at-task-9"}
    stamps = [int(a.headers["webhook-timestamp"]) for a in sink.arrivals]
    assert all(low <= stamp <= high for stamp, (low, high) in zip(stamps, windows, strict=True))
    assert stamps == sorted(set(stamps))  # each attempt's own
    for arrival in sink.arrivals:
        verify(secret, arrival)  # within the verifier's 5 minutes of now


def test_a_tampered_body_fails_verification(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    secret = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    callback(sink.url_for("/hook"), data={"amount": 100})
    [arrival] = sink.arrivals
    verify(secret, arrival)
    with pytest.raises(WebhookVerificationError):
        verify(secret, dataclasses.replace(arrival, body=b'{"amount":900}'))
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), arrival)


def test_without_a_secret_no_webhook_header_is_sent(sink: HttpSink) -> None:
    callback(sink.url_for("/hook"), data={"n": 1})
    [arrival] = sink.arrivals
    assert [name for name in arrival.headers if name.lower().startswith("webhook-")] == []


def test_a_payload_cannot_set_a_webhook_header(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", new_secret())
    error = callback_failure(sink.url_for("/hook"), headers={"Webhook-Signature": "v1,forged"})
    assert not error.retryable
    assert error.message == "payload.headers: header 'Webhook-Signature' is set by the scheduler"
    assert sink.arrivals == []


@pytest.mark.parametrize(
    "secret", ["whsec_" + base64.b64encode(b"too short").decode(), "sk_" + "Q" * 40, "whsec_#Zm9vYmFyYmF6cXV4"]
)
def test_a_malformed_secret_sends_nothing_and_says_so(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, secret: str
) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    for attempt in (1, 2):
        error = callback_failure(sink.url_for("/hook"), data={"n": 1}, attempt=attempt)
        assert error.retryable
        assert error.message == signing.MISCONFIGURED
    assert sink.arrivals == []  # never unsigned
    failures = [r for r in caplog.records if r.getMessage() == "task execution failed"]
    assert [r.error_detail.split(" ")[0] for r in failures] == ["AT_WEBHOOK_SECRET", "AT_WEBHOOK_SECRET"]  # type: ignore[attr-defined]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert secret.removeprefix("whsec_") not in everything_logged(caplog)


def hook_secret(text: str) -> str:
    return boto_client("secretsmanager").create_secret(Name="at/webhooks", SecretString=text)["ARN"]


def count_secret_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    read = signing._secret_string

    def counted(arn: str, deadline: float | None) -> str:
        reads.append(arn)
        return read(arn, deadline)

    monkeypatch.setattr(signing, "_secret_string", counted)
    return reads


def test_on_aws_the_secret_is_read_from_secrets_manager_once(
    moto_aws: None, sink: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = new_secret(), new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", hook_secret(f"{old} {new}\n"))
    reads = count_secret_reads(monkeypatch)
    with caplog.at_level(logging.DEBUG):
        threads = [threading.Thread(target=callback, args=(sink.url_for("/hook"), n)) for n in range(1, 9)]
        for thread in threads:  # callbacks starting together: one read
            thread.start()
        for thread in threads:
            thread.join()
        callback(sink.url_for("/hook"), 9, data={"n": 9})
    assert len(reads) == 1
    assert len(sink.arrivals) == 9
    for arrival in sink.arrivals:
        verify(old, arrival)
        verify(new, arrival)
    for secret in (old, new):
        assert secret.removeprefix("whsec_") not in everything_logged(caplog)


def test_a_rotated_secret_is_read_after_env_reset_or_a_snapstart_snapshot(
    moto_aws: None, sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snapshot_restore_py

    first, second = new_secret(), new_secret()
    arn = hook_secret(first)
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", arn)
    callback(sink.url_for("/hook"), 1)
    boto_client("secretsmanager").put_secret_value(SecretId=arn, SecretString=second)
    callback(sink.url_for("/hook"), 2)  # still the first: read once per execution environment
    env.reset()
    callback(sink.url_for("/hook"), 3)
    boto_client("secretsmanager").put_secret_value(SecretId=arn, SecretString=first)
    for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():  # as Lambda's runtime does
        hook(*args, **kwargs)
    callback(sink.url_for("/hook"), 4)
    by_task = {arrival.task_id: arrival for arrival in sink.arrivals}
    for task_id, secret in {1: first, 2: first, 3: second, 4: first}.items():
        verify(secret, by_task[task_id])


def test_an_unreadable_secret_sends_nothing(moto_aws: None, sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:at/none-AbCdEf")
    error = callback_failure(sink.url_for("/hook"))
    assert error.retryable
    assert error.message == (
        "callback not sent: its signing secret could not be read "
        "(Secrets Manager GetSecretValue failed: ResourceNotFoundException)"
    )
    assert sink.arrivals == []


def test_a_malformed_secret_in_secrets_manager_names_both_variables(
    moto_aws: None, sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", hook_secret('{"AT_WEBHOOK_SECRET": "whsec_x"}'))
    error = callback_failure(sink.url_for("/hook"))
    assert (error.retryable, error.message) == (True, signing.MISCONFIGURED)
    assert error.detail == (
        "AT_WEBHOOK_SECRET (the SecretString of AT_WEBHOOK_SECRET_ARN) is JSON: "
        "expected plain text, whsec_ followed by the base64 of 24 to 64 random bytes"
    )
    assert sink.arrivals == []


# --- the local outbox ------------------------------------------------------------------------------


def outbox_lines(channel: str) -> list[dict]:
    path = Path(os.environ["AT_OUTBOX_DIR"]) / f"{channel}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outbox_receives_every_channel_without_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_EMAIL_FROM", SENDER)
    execute(1, "send_email", {"to": "ann@example.com", "subject": "Hi", "body": "text"}, 1)
    execute(2, "send_sms", {"phone_number": "+15551234567", "message": "hello"}, 3)
    execute(3, "sqs_message", {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/jobs.fifo", "body": {"a": 1}}, 1)
    [email] = outbox_lines("email")
    assert (email["task_id"], email["attempt"]) == (1, 1)
    assert email["timestamp"].endswith("Z")
    assert email["message"] == {
        "from": SENDER,
        "to": ["ann@example.com"],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "subject": "Hi",
        "text": "text",
        "html": None,
    }
    [sms] = outbox_lines("sms")
    assert (sms["task_id"], sms["attempt"], sms["message"]) == (
        2,
        3,
        {"phone_number": "+15551234567", "message": "hello", "sender_id": None},
    )
    [message] = outbox_lines("sqs")
    assert message["message"] == {
        "queue_url": "https://sqs.us-east-1.amazonaws.com/1/jobs.fifo",
        "body": '{"a":1}',
        "message_group_id": "at-task-3",
        "deduplication_id": "at-task-3",
        "delay_seconds": None,
        "attributes": {},
    }


def test_outbox_appends_whole_lines_from_many_threads() -> None:
    def send(worker: int) -> None:
        for n in range(50):
            execute(worker * 1000 + n, "send_sms", {"phone_number": "+15551234567", "message": "x" * 1500}, 1)

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = outbox_lines("sms")
    assert len(lines) == 400
    assert len({line["task_id"] for line in lines}) == 400


def test_outbox_write_failure_is_retryable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AT_OUTBOX_DIR", str(blocker / "outbox"))
    with pytest.raises(ExecutionError) as caught:
        execute(1, "send_sms", {"phone_number": "+15551234567", "message": "hi"}, 1)
    assert caught.value.retryable
    assert caught.value.message.startswith("outbox write failed:")
