"""AWS delivery: when it is on, lazily created clients, and what an SDK error means for a retry.

boto3 is imported only when a task is actually delivered through AWS: importing it costs the API
functions' cold starts ~100+ ms, and the local run never needs it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from .errors import ExecutionError, truncate
from .settings import executor_settings

# Error codes that mean "try again later", whatever their HTTP status.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "KMSThrottlingException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalErrorException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)

# (seconds per connect and per read, SDK attempts), most generous first. A client is made per
# service and profile (at most len(_TIMEOUT_PROFILES) of each), and a call uses the most generous
# profile whose worst case fits in what is left of the attempt's deadline (see worst_case_seconds).
_TIMEOUT_PROFILES: tuple[tuple[float, int], ...] = ((5.0, 2), (2.0, 2), (1.0, 2), (1.0, 1), (0.5, 1))
# botocore's standard retry mode sleeps at most this long before its second attempt.
_RETRY_SLEEP_SECONDS = 1.0

# Error codes that mean "the worker's role may not do this"; sdk_call's caller says what that means.
_ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "AuthorizationError", "AuthorizationErrorException"}
)
# What a few other codes mean, in the task owner's terms.
_MEANINGS = {
    "AWS.SimpleQueueService.NonExistentQueue": "the queue does not exist",
    "QueueDoesNotExist": "the queue does not exist",
}
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
# botocore's validation report: 'Invalid type for parameter Message, value: …', 'Missing required
# parameter in Destination: "ToAddresses"', 'Unknown parameter in input: "Foo", must be one of: …'.
_PARAMETER = re.compile(r'parameter (?:in ([\w.\[\]]+): "([\w.\[\]-]+)"|([\w.\[\]-]+),)')

_clients: dict[tuple[str, tuple[float, int]], Any] = {}
_clients_lock = threading.Lock()


def endpoint_url(service: str) -> str | None:
    return executor_settings().endpoint_for(service)


def delivery_enabled(service: str) -> bool:
    """AWS is used only when asked for (AT_AWS_DELIVERY) or pointed at an endpoint; else the outbox."""
    return executor_settings().aws_delivery or endpoint_url(service) is not None


def client(service: str, deadline: float | None = None) -> Any:
    """A client whose timeouts fit in what is left before `deadline` (time.monotonic()); without a
    deadline (callers outside the executors), the most generous profile.

    Clients are cached per service and timeout profile (they are thread-safe; creating one is not
    cheap). botocore has no per-call timeout, so the fit is by profile: its connect and read
    timeouts, times its attempts, plus the retry sleep, stay within the time left, down to the
    smallest profile (one attempt of 0.5 s + 0.5 s), which may overrun a deadline under a second away.
    """
    profile = _TIMEOUT_PROFILES[0] if deadline is None else timeout_profile(deadline - time.monotonic())
    key = (service, profile)
    existing = _clients.get(key)
    if existing is not None:
        return existing
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(service, *profile)
        return _clients[key]


def timeout_profile(seconds_left: float) -> tuple[float, int]:
    """(seconds per connect and per read, attempts): the most generous that fits in `seconds_left`."""
    for profile in _TIMEOUT_PROFILES:
        if worst_case_seconds(*profile) <= seconds_left:
            return profile
    return _TIMEOUT_PROFILES[-1]


def worst_case_seconds(timeout: float, attempts: int) -> float:
    """How long a call can take: each attempt may connect and wait for its answer, then the retry sleep."""
    return attempts * 2 * timeout + (attempts - 1) * _RETRY_SLEEP_SECONDS


def reset_clients() -> None:
    """Forgets the cached clients (tests switch endpoints and credentials between cases)."""
    with _clients_lock:
        _clients.clear()


def _new_client(service: Any, timeout: float, attempts: int) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": attempts}
    )
    # A session of its own: boto3's default session is not safe to share between threads. botocore
    # reads AWS_DEFAULT_REGION only; AWS_REGION (what Lambda and most tools set) is honoured too.
    session = boto3.session.Session(region_name=executor_settings().aws_region)
    return session.client(service, endpoint_url=endpoint_url(service), config=config)


@contextlib.contextmanager
def sdk_call(action: str, *, denied: str | None = None) -> Iterator[None]:
    """Turns anything the SDK raises into an ExecutionError, classified for retry.

    `denied`: what an access-denied answer means for the task's owner (the AWS message itself names
    the worker's role and account, so it goes to the log line only)."""
    try:
        yield
    except ExecutionError:
        raise
    except Exception as exc:
        raise classify_error(exc, action, denied=denied) from exc


def classify_error(exc: Exception, action: str, *, denied: str | None = None) -> ExecutionError:
    """The stored message names the action and AWS's error code (plus what it means, for a few);
    AWS's own message (account ids, role ARNs, identity verification state, endpoint URLs) is detail
    for the log line."""
    from botocore.exceptions import ClientError, NoRegionError, ParamValidationError

    if isinstance(exc, ClientError):
        code, aws_message, status = _client_error_parts(exc)
        retryable = code in _TRANSIENT_CODES or status is None or status >= 500 or status == 429
        meaning = denied if code in _ACCESS_DENIED_CODES else _MEANINGS.get(code)
        message = f"{action} failed: {code}" + (f": {meaning}" if meaning else "")
        return ExecutionError(message, retryable=retryable, detail=f"HTTP {status}: {truncate(aws_message)}")
    if isinstance(exc, ParamValidationError):
        # The report quotes the values too (a message body, addresses): only parameter names leave here.
        names = ", ".join(_invalid_parameters(str(exc))) or "unknown"
        return ExecutionError(f"{action} rejected the request: invalid parameter {names}", retryable=False)
    if isinstance(exc, NoRegionError):
        return ExecutionError(f"{action} failed: no AWS region configured (AWS_REGION)", retryable=False)
    # Endpoint connection errors, timeouts, credential lookups and anything unexpected: transient.
    return ExecutionError(f"{action} failed: {type(exc).__name__}", detail=truncate(str(exc)))


def _client_error_parts(exc: Any) -> tuple[str, str, int | None]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.get("Code", ""))
    return (code if _ERROR_CODE.fullmatch(code) else "UnknownError"), str(error.get("Message", "")), status


def _invalid_parameters(report: str) -> list[str]:
    names = []
    for where, quoted, plain in _PARAMETER.findall(report):
        name = plain or (quoted if where in ("", "input") else f"{where}.{quoted}")
        if name not in names:
            names.append(name)
    return names[:3]
