"""http_callback: call a URL; any 2xx is success.

Payload: {"url": str, "method"?: GET|POST|PUT|PATCH|DELETE (default POST), "data"?: JSON, "headers"?: {str: str}}
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import ssl
import string
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, Field, field_validator

from ..text import has_control_characters
from . import http_transport, safety, signing
from .deadlines import seconds_text
from .errors import ExecutionError, truncate
from .payloads import PAYLOAD_CONFIG, parse_payload

USER_AGENT = "AT-scheduler/1"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_URL_LENGTH = 8192
MAX_HEADERS = 50
MAX_HEADER_VALUE_LENGTH = 8192
ERROR_BODY_CHARS = 200

# Headers the scheduler owns: framing/hop-by-hop ones would break the request or the kept-alive
# connection, and the idempotency/task headers must be trustworthy for the receiver. So must every
# webhook-* header (the Standard Webhooks namespace: signing.py's webhook-id, -timestamp and
# -signature), signed or not: a receiver may read them as the scheduler's.
RESERVED_HEADER_PREFIXES = ("webhook-",)
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-authorization",
        "proxy-connection",
        "idempotency-key",
        "x-at-task-id",
        "x-at-attempt",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
# Keeps every printable ASCII character as written and percent-encodes the rest (non-ASCII paths).
_URL_SAFE_CHARACTERS = "".join(c for c in string.printable if c not in string.whitespace)


@dataclass(frozen=True)
class CallbackUrl:
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line


class CallbackStatusError(ExecutionError):
    """The callback answered with a non-2xx status (kept for the log line)."""

    def __init__(self, message: str, *, retryable: bool, http_status: int, detail: str | None = None) -> None:
        super().__init__(message, retryable=retryable, detail=detail)
        self.http_status = http_status


class HttpCallbackPayload(BaseModel):
    model_config = PAYLOAD_CONFIG

    url: str
    method: str = "POST"
    data: Any = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS)

    @field_validator("url")
    @classmethod
    def _url_is_callable(cls, url: str) -> str:
        parse_callback_url(url)
        return url

    @field_validator("method", mode="before")
    @classmethod
    def _method_is_known(cls, method: object) -> object:
        if isinstance(method, str):
            if method.upper() not in METHODS:
                raise ValueError(f"must be one of {', '.join(METHODS)}")
            return method.upper()
        return method

    @field_validator("headers")
    @classmethod
    def _headers_are_safe(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            check_header(name, value)
        return headers

    def body(self) -> bytes | None:
        if self.method == "GET" or self.data is None:
            return None
        text = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode()
        except UnicodeEncodeError:  # an unpaired surrogate: \u-escaped JSON is still the same value
            return json.dumps(self.data, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1024)  # validation and run() both parse it; the same URLs recur across tasks
def parse_callback_url(url: str) -> CallbackUrl:
    """Raises ValueError (with the message shown to the user) unless `url` is a plain http(s) URL."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if has_control_characters(url) or " " in url:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("must be an http(s) URL with a valid host and port") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain user information (user:password@)")
    try:
        parts.hostname.encode("idna")  # what the resolver, the Host header and TLS SNI will need
    except UnicodeError:
        raise ValueError("must have a valid host name") from None
    if port == 0:
        raise ValueError("must be an http(s) URL with a valid host and port")
    scheme = parts.scheme.lower()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if scheme == "https" else 80
    return CallbackUrl(scheme, parts.hostname, port or default_port, quote(target, safe=_URL_SAFE_CHARACTERS))


def check_header(name: str, value: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name[:50]!r} is not a valid header name")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_HEADER_PREFIXES):
        raise ValueError(f"header {name!r} is set by the scheduler")
    if not value.isascii() or has_control_characters(value.replace("\t", " ")) or len(value) > MAX_HEADER_VALUE_LENGTH:
        raise ValueError(f"header {name!r} has an invalid value (ASCII only, no control characters, at most 8 KiB)")


def run(task_id: int, payload: object, attempt: int, *, deadline: float) -> dict[str, object]:
    """One attempt, over by `deadline` (time.monotonic()): DNS, connect, TLS, request and answer together."""
    budget = deadline - time.monotonic()
    callback = parse_payload(HttpCallbackPayload, payload)
    url = parse_callback_url(callback.url)
    body = callback.body()
    headers = request_headers(task_id, attempt, callback.headers, has_body=body is not None)
    # Signed before anything is sent, so an unusable secret fails the attempt with nothing sent.
    headers.update(signing.signature_headers(idempotency_key(task_id), body, deadline))
    try:
        addresses = safety.vetted_addresses(url.host, url.port, deadline)
        destination = http_transport.Destination(url.scheme, url.host, url.port, tuple(addresses))
        reply = http_transport.send(destination, callback.method, url.target, headers, body, deadline)
    except (OSError, http.client.HTTPException) as exc:
        raise transport_error(exc, budget) from None
    check_status(reply.status, reply.body_head)
    return {"http_status": reply.status, "http_host": url.host}


def request_headers(task_id: int, attempt: int, custom: dict[str, str], *, has_body: bool) -> dict[str, str]:
    defaults = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if has_body:
        defaults["Content-Type"] = "application/json"
    overridden = {name.lower() for name in custom}
    headers = {name: value for name, value in defaults.items() if name.lower() not in overridden}
    headers.update(custom)
    # The same key on every attempt, so the receiver can drop at-least-once duplicates.
    headers["Idempotency-Key"] = idempotency_key(task_id)
    headers["X-AT-Task-Id"] = str(task_id)
    headers["X-AT-Attempt"] = str(attempt)
    return headers


def idempotency_key(task_id: int) -> str:
    """The task's key on every attempt: the Idempotency-Key header, and the signed webhook-id (which
    is one key for one task too, so a receiver deduplicating by either header sees the same)."""
    return f"at-task-{task_id}"


def check_status(status: int, body_head: bytes) -> None:
    """Any 2xx passes. Otherwise the stored message is the status; the start of the body (which may be
    a stack trace or an internal page of the receiver) goes to the log line only."""
    if 200 <= status < 300:
        return
    message = f"callback returned HTTP {status}"
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    snippet = truncate(body_head[: ERROR_BODY_CHARS * 4].decode("utf-8", "replace"), ERROR_BODY_CHARS)
    retryable = status >= 500 or status in (408, 429)
    raise CallbackStatusError(
        message, retryable=retryable, http_status=status, detail=f"response body: {snippet}" if snippet else None
    )


def transport_error(exc: OSError | http.client.HTTPException, budget: float) -> ExecutionError:
    """What a failed exchange means; `budget` is the attempt's time in seconds (for "timed out after")."""
    detail = truncate(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):  # in whichever phase: resolving, connecting, TLS, sending, reading
        return ExecutionError(f"callback timed out after {seconds_text(budget)}s", detail=detail)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # A wrong or expired certificate is a configuration problem at the receiver: retries won't fix it.
        reason = getattr(exc, "verify_message", None) or "certificate verify failed"
        return ExecutionError(
            f"callback TLS certificate verification failed: {truncate(reason)}", retryable=False, detail=detail
        )
    if isinstance(exc, ssl.SSLError):
        return ExecutionError(
            f"callback TLS error: {truncate(getattr(exc, 'reason', None) or 'handshake failed')}", detail=detail
        )
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
        return ExecutionError(f"callback sent an invalid HTTP response: {type(exc).__name__}", detail=detail)
    return ExecutionError(f"callback connection failed: {_connection_failure(exc)}", detail=detail)


def _connection_failure(exc: OSError) -> str:
    """The error without what else an OSError may carry (file names, addresses)."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    if isinstance(exc, http.client.HTTPException):  # RemoteDisconnected: http.client's own fixed text
        return truncate(str(exc))
    return type(exc).__name__
