"""AWS delivery: when it is on, lazily created clients, and what an SDK error means for a retry.

boto3 is imported only when a task is actually delivered through AWS: importing it costs the API
functions' cold starts ~100+ ms, and the local run never needs it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .errors import ExecutionError, truncate
from .settings import env_flag, env_str

# botocore's own service-specific variable for SES v2 is AWS_ENDPOINT_URL_SESV2; _SES is accepted too.
_ENDPOINT_VARIABLES = {
    "sesv2": ("AWS_ENDPOINT_URL_SESV2", "AWS_ENDPOINT_URL_SES"),
    "sns": ("AWS_ENDPOINT_URL_SNS",),
    "sqs": ("AWS_ENDPOINT_URL_SQS",),
}

# Error codes that mean "try again later", whatever their HTTP status.
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException", "RequestThrottled",
    "RequestThrottledException", "RequestLimitExceeded", "SlowDown", "ProvisionedThroughputExceededException",
    "KMSThrottlingException", "ServiceUnavailable", "ServiceUnavailableException", "InternalError",
    "InternalFailure", "InternalServerError", "InternalErrorException", "RequestTimeout",
    "RequestTimeoutException", "ExpiredToken", "ExpiredTokenException", "RequestExpired",
})

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def endpoint_url(service: str) -> str | None:
    for variable in (*_ENDPOINT_VARIABLES.get(service, ()), "AWS_ENDPOINT_URL"):
        if value := env_str(variable):
            return value
    return None


def delivery_enabled(service: str) -> bool:
    """AWS is used only when asked for (AT_AWS_DELIVERY) or pointed at an endpoint; else the outbox."""
    return env_flag("AT_AWS_DELIVERY") or endpoint_url(service) is not None


def client(service: str) -> Any:
    """One client per service per process (clients are thread-safe; creating one is not cheap)."""
    existing = _clients.get(service)
    if existing is not None:
        return existing
    with _clients_lock:
        if service not in _clients:
            _clients[service] = _new_client(service)
        return _clients[service]


def reset_clients() -> None:
    """Forgets the cached clients (tests switch endpoints and credentials between cases)."""
    with _clients_lock:
        _clients.clear()


def _new_client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=5, retries={"mode": "standard", "max_attempts": 2})
    # A session of its own: boto3's default session is not safe to share between threads. botocore
    # reads AWS_DEFAULT_REGION only; AWS_REGION (what Lambda and most tools set) is honoured too.
    session = boto3.session.Session(region_name=env_str("AWS_REGION"))
    return session.client(service, endpoint_url=endpoint_url(service), config=config)


@contextlib.contextmanager
def sdk_call(action: str) -> Iterator[None]:
    """Turns anything the SDK raises into an ExecutionError, classified for retry."""
    try:
        yield
    except ExecutionError:
        raise
    except Exception as exc:
        raise classify_error(exc, action) from exc


def classify_error(exc: Exception, action: str) -> ExecutionError:
    from botocore.exceptions import ClientError, NoRegionError, ParamValidationError

    if isinstance(exc, ClientError):
        code, message, status = _client_error_parts(exc)
        retryable = code in _TRANSIENT_CODES or status is None or status >= 500 or status == 429
        return ExecutionError(f"{action} failed: {code}: {truncate(message)}", retryable=retryable)
    if isinstance(exc, ParamValidationError):
        return ExecutionError(f"{action} rejected the request: {truncate(str(exc))}", retryable=False)
    if isinstance(exc, NoRegionError):
        return ExecutionError(f"{action} failed: no AWS region configured (AWS_REGION)", retryable=False)
    # Endpoint connection errors, timeouts, credential lookups and anything unexpected: transient.
    return ExecutionError(f"{action} failed: {type(exc).__name__}: {truncate(str(exc))}")


def _client_error_parts(exc: Any) -> tuple[str, str, int | None]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "Unknown")), str(error.get("Message", "")), status
