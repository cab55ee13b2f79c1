"""Signed callbacks: the Standard Webhooks scheme (standardwebhooks.com, version 1.0.0) on http_callback.

With a signing secret configured, every callback request carries three more headers:

    webhook-id: at-task-<id>          the same on every attempt of a task (the Idempotency-Key's value)
    webhook-timestamp: 1796169600     this attempt's Unix time, in seconds
    webhook-signature: v1,<base64>    HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>", the body
                                      being the exact bytes sent (none for GET); one per secret, spaced

so any verifier of the specification accepts them, e.g. PyPI's `standardwebhooks`:
`Webhook(secret).verify(body, headers)`. A secret is "whsec_" + the base64 of 24 to 64 random bytes;
several, separated by spaces, all sign, which is how a secret is rotated without a failed
verification: sign with old and new, move the receivers to the new one, then drop the old.

Where the secret comes from (settings.SigningSettings): AT_WEBHOOK_SECRET (the local run), or on AWS
the SecretString of the Secrets Manager secret AT_WEBHOOK_SECRET_ARN, which is read at the first
callback of an execution environment and kept, decoded; env.reset() and a SnapStart snapshot
forget it. Neither set: callbacks are not signed, and carry no webhook-* header.

A secret that is set but unusable (not whsec_, bad base64, too short or long, both variables set,
the secret unreadable) never lets a callback out unsigned: each attempt fails, retryably, without
sending anything, with a message that says why; the worker logs it once at ERROR. Messages name
the variables, never the secret's text.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import threading
import time
from dataclasses import dataclass, field

from snapshot_restore_py import register_before_snapshot

from ..env import ConfigurationError, cached
from ..observability import logger
from .errors import ExecutionError
from .settings import signing_settings

VARIABLE = "AT_WEBHOOK_SECRET"
ARN_VARIABLE = "AT_WEBHOOK_SECRET_ARN"
KEY_PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the specification's bounds: 192 to 512 bits
FORMAT = f"{KEY_PREFIX} followed by the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes"
# After a failed load, callbacks fail at once with the same error for this long; then the next one
# tries again. A broken secret costs a Secrets Manager call per interval, not one per callback, and a
# fixed one is picked up within the interval.
RETRY_LOAD_SECONDS = 10.0
# What the task's owner reads (error_message); what exactly is wrong is in the log line's error_detail.
MISCONFIGURED = (
    "callback not sent: the scheduler's callback signing secret is misconfigured "
    f"({VARIABLE}); its operator must fix it"
)

_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:\S+")


class SecretUnavailable(ExecutionError):
    """Secrets Manager did not hand out the signing secret (access denied, not found, unreachable)."""


@dataclass(frozen=True)
class Signer:
    """The decoded keys, made once per execution environment into keyed HMAC-SHA256 states: a
    callback then costs a copy and one pass over its bytes per key (about 2 µs for a small body and
    one key, 3.5 µs for two, against the ~1 ms of CPU a callback takes)."""

    keys: tuple[bytes, ...] = field(repr=False)
    _keyed: tuple[hmac.HMAC, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keyed", tuple(hmac.new(key, digestmod="sha256") for key in self.keys))

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        signatures = []
        for keyed in self._keyed:
            mac = keyed.copy()  # the shared state is only read (copy() holds its lock): thread-safe
            mac.update(signed)
            signatures.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }


def signature_headers(webhook_id: str, body: bytes | None, deadline: float) -> dict[str, str]:
    """The webhook-* headers of one request, signed now; {} when callbacks are not signed.

    Raises ExecutionError (retryable) when a secret is configured but cannot be used: the callback is
    then not sent at all, rather than sent unsigned."""
    try:
        current = signer(deadline)
    except ConfigurationError as exc:
        raise ExecutionError(MISCONFIGURED, detail=str(exc)) from None
    if current is None:
        return {}
    return current.headers(webhook_id, int(time.time()), body or b"")


def parse_secrets(text: str, source: str) -> Signer:
    """`text`: one or more "whsec_<base64>" separated by whitespace. Raises ConfigurationError naming
    `source` (the variable), never quoting the text."""
    secrets = text.split()
    if not secrets:
        raise ConfigurationError(f"{source} is empty: expected {FORMAT}")
    if secrets[0].startswith(("{", "[", '"')):  # a key/value secret, as the console offers first
        raise ConfigurationError(f"{source} is JSON: expected plain text, {FORMAT}")
    return Signer(
        tuple(_key(secret, f"{source} (secret {n} of {len(secrets)})") for n, secret in enumerate(secrets, 1))
    )


def _key(secret: str, where: str) -> bytes:
    if not secret.startswith(KEY_PREFIX):
        raise ConfigurationError(f"{where} does not start with {KEY_PREFIX!r}: expected {FORMAT}")
    encoded = secret.removeprefix(KEY_PREFIX)
    try:  # strict: a character another verifier would skip would give it another key
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ConfigurationError(f"{where} is not valid base64 after {KEY_PREFIX!r}: expected {FORMAT}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ConfigurationError(f"{where} decodes to {len(key)} bytes: expected {FORMAT}")
    return key


def signer(deadline: float | None = None) -> Signer | None:
    """This execution environment's signer, or None when callbacks are not signed.

    Raises ConfigurationError (a secret is set but unusable) or SecretUnavailable (it could not be read)."""
    loader = _loader()
    if loader.loaded:
        return loader.signer
    return loader.load(deadline)


class _Loader:
    """Loads the signer once; threads that start callbacks together wait for the one that reads it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.signer: Signer | None = None
        self.failure: ConfigurationError | SecretUnavailable | None = None
        self.retry_at = 0.0
        self.reported = False

    def load(self, deadline: float | None) -> Signer | None:
        with self.lock:
            if self.loaded:
                return self.signer
            if self.failure is not None and time.monotonic() < self.retry_at:
                raise _fresh(self.failure)
            try:
                self.signer = _read_signer(deadline)
            except (ConfigurationError, SecretUnavailable) as exc:
                self.failure, self.retry_at = exc, time.monotonic() + RETRY_LOAD_SECONDS
                if not self.reported:
                    self.reported = True
                    detail = getattr(exc, "detail", None)
                    logger.error(
                        "Callback signing secret unusable: no callback is sent until it is fixed",
                        extra={"error": str(exc), **({"error_detail": detail} if detail else {})},
                    )
                raise _fresh(exc) from None
            self.loaded, self.failure = True, None
            return self.signer


@cached  # env.reset() forgets the secret, and so does the SnapStart hook below
def _loader() -> _Loader:
    return _Loader()


@register_before_snapshot  # a SnapStart snapshot must not hold the keys (nor share them, stale, when restored)
def forget_signing_secret() -> None:
    _loader.cache_clear()


def _fresh(error: ConfigurationError | SecretUnavailable) -> ConfigurationError | SecretUnavailable:
    """A new exception like `error`: one instance raised in many threads would pile up their tracebacks."""
    if isinstance(error, SecretUnavailable):
        return SecretUnavailable(error.message, detail=error.detail)
    return ConfigurationError(*error.args)


def _read_signer(deadline: float | None) -> Signer | None:
    settings = signing_settings()
    if settings.secret is not None and settings.secret_arn:
        raise ConfigurationError(f"{VARIABLE} and {ARN_VARIABLE} are both set: set one of them")
    if settings.secret_arn:
        source = f"{VARIABLE} (the SecretString of {ARN_VARIABLE})"
        return parse_secrets(_secret_string(settings.secret_arn, deadline), source)
    if settings.secret is not None:
        return parse_secrets(settings.secret.get_secret_value(), VARIABLE)
    return None


def _secret_string(arn: str, deadline: float | None) -> str:
    """The secret's text, with a client whose timeouts fit in what is left of the attempt (aws.client)."""
    if not _SECRET_ARN.fullmatch(arn):  # not quoted: it may be the secret itself, set in the wrong variable
        expected = "arn:aws:secretsmanager:<region>:<account>:secret:<name>"
        raise ConfigurationError(f"{ARN_VARIABLE} is not a Secrets Manager secret ARN ({expected})")
    from . import aws

    try:
        answer = aws.client("secretsmanager", deadline).get_secret_value(SecretId=arn)
    except Exception as exc:  # noqa: BLE001 - any SDK or network error: the secret is unavailable now
        error = aws.classify_error(exc, "Secrets Manager GetSecretValue", denied="the worker may not read it")
        raise SecretUnavailable(
            f"callback not sent: its signing secret could not be read ({error.message})", detail=error.detail
        ) from None
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise ConfigurationError(f"the secret {ARN_VARIABLE} names has no SecretString: expected {FORMAT}")
    return text
