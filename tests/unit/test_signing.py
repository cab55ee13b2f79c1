"""Signed callbacks (atcore/executors/signing.py), checked by a verifier no one here wrote.

The `standardwebhooks` package (PyPI, the specification's own Python library) verifies every
signature; a secret's format, where it is read from, and what happens when it cannot be used are
checked without the network (Secrets Manager through moto is in tests/integration/test_executors_peers.py).
"""

from __future__ import annotations

import base64
import logging
import os
import time

import pytest
import snapshot_restore_py
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from atcore import env
from atcore.env import ConfigurationError
from atcore.executors import ExecutionError, signing
from atcore.executors.signing import Signer, parse_secrets


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


@pytest.fixture(autouse=True)
def no_signing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AT_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("AT_WEBHOOK_SECRET_ARN", raising=False)


def signed(signer: Signer, body: bytes, webhook_id: str = "at-task-42") -> dict[str, str]:
    return signer.headers(webhook_id, int(time.time()), body)


# --- signatures, as a Standard Webhooks verifier sees them ----------------------------------------


def test_one_secret_signs_what_the_verifier_accepts() -> None:
    secret = new_secret()
    body = b'{"hello":"world"}'
    headers = signed(parse_secrets(secret, "AT_WEBHOOK_SECRET"), body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "at-task-42"
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]
    assert Webhook(secret).verify(body, headers) == {"hello": "world"}


def test_two_secrets_each_verify_alone() -> None:
    old, new = new_secret(24), new_secret(64)
    body = b'{"n":1}'
    headers = signed(parse_secrets(f"{old} {new}", "AT_WEBHOOK_SECRET"), body)
    assert [s[:3] for s in headers["webhook-signature"].split(" ")] == ["v1,", "v1,"]
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)  # a third secret matches neither


def test_an_empty_body_and_a_non_ascii_body_verify() -> None:
    secret = new_secret()
    signer = parse_secrets(secret, "AT_WEBHOOK_SECRET")
    Webhook(secret).verify(b"", signed(signer, b""), json_parse=False)
    body = '{"name":"Zoë ✓ 日本語 🎉"}'.encode()
    assert Webhook(secret).verify(body, signed(signer, body)) == {"name": "Zoë ✓ 日本語 🎉"}


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp"])
def test_anything_changed_fails_verification(tamper: str) -> None:
    secret = new_secret()
    body = b'{"amount":100}'
    headers = signed(parse_secrets(secret, "AT_WEBHOOK_SECRET"), body)
    if tamper == "body":
        body = b'{"amount":900}'
    elif tamper == "id":
        headers["webhook-id"] = "at-task-43"
    else:
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_the_signed_content_is_id_dot_timestamp_dot_body() -> None:
    # The specification's construction, spelled out once with a fixed key and time.
    import hashlib
    import hmac

    key = bytes(range(32))
    headers = Signer((key,)).headers("at-task-7", 1796169600, b"[1,2]")
    expected = hmac.new(key, b"at-task-7.1796169600.[1,2]", hashlib.sha256).digest()
    assert headers == {
        "webhook-id": "at-task-7",
        "webhook-timestamp": "1796169600",
        "webhook-signature": "v1," + base64.b64encode(expected).decode(),
    }


def test_keys_are_not_in_repr() -> None:
    assert repr(parse_secrets(new_secret(), "AT_WEBHOOK_SECRET")) == "Signer()"


# --- secrets' format ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [24, 32, 64])
def test_secrets_of_24_to_64_bytes_are_accepted_padded_or_not(size: int) -> None:
    secret = new_secret(size)
    assert parse_secrets(secret, "X").keys[0] == base64.b64decode(secret[6:])
    assert parse_secrets(secret.rstrip("="), "X").keys[0] == base64.b64decode(secret[6:])


MALFORMED = {
    "no prefix": base64.b64encode(os.urandom(32)).decode(),
    "another prefix": "whsk_" + base64.b64encode(os.urandom(32)).decode(),
    "JSON": '{"secret": "' + new_secret() + '"}',
    "bad base64": "whsec_" + "A" * 31 + "!",
    "URL-safe base64": "whsec_" + "-_" * 22,  # another verifier would skip those characters
    "bad padding": "whsec_" + "A" * 33,
    "nothing after the prefix": "whsec_",
    "too short (23 bytes)": new_secret(23),
    "too long (65 bytes)": new_secret(65),
}


@pytest.mark.parametrize(("name", "secret"), MALFORMED.items(), ids=MALFORMED.keys())
def test_a_malformed_secret_is_a_configuration_error_naming_the_variable_not_the_value(name: str, secret: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_secrets(secret, "AT_WEBHOOK_SECRET")
    message = str(caught.value)
    assert message.startswith("AT_WEBHOOK_SECRET (secret 1 of 1) " if name != "JSON" else "AT_WEBHOOK_SECRET is JSON")
    assert "whsec_ followed by the base64 of 24 to 64 random bytes" in message
    if quoted := secret.removeprefix("whsec_")[:8]:
        assert quoted not in message


def test_one_bad_secret_of_several_is_named_by_its_place() -> None:
    with pytest.raises(ConfigurationError, match=r"AT_WEBHOOK_SECRET \(secret 2 of 2\) decodes to 16 bytes"):
        parse_secrets(f"{new_secret()} {new_secret(16)}", "AT_WEBHOOK_SECRET")


# --- where the secret comes from, and when it cannot be used --------------------------------------


def test_without_a_secret_nothing_is_signed() -> None:
    assert signing.signer() is None
    assert signing.signature_headers("at-task-1", b"{}", time.monotonic() + 5) == {}


def test_a_blank_variable_means_unsigned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", "   ")
    assert signing.signer() is None


def test_the_variable_is_read_once_and_env_reset_forgets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = new_secret(), new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", first)
    signer = signing.signer()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", second)
    assert signing.signer() is signer  # kept for the execution environment
    env.reset()
    body = b"{}"
    Webhook(second).verify(body, signing.signature_headers("at-task-1", body, time.monotonic() + 5))


def test_a_snapstart_snapshot_forgets_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", new_secret())
    signer = signing.signer()
    hooks = [hook for hook, _args, _kwargs in snapshot_restore_py.get_before_snapshot()]
    assert signing.forget_signing_secret in hooks
    signing.forget_signing_secret()
    assert signing.signer() is not signer


def test_a_malformed_secret_fails_at_first_use_and_never_signs_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "whsec_" + base64.b64encode(b"sixteen byte key").decode()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", secret)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            with pytest.raises(ExecutionError) as caught:
                signing.signature_headers("at-task-1", b"{}", time.monotonic() + 5)
            error = caught.value
            assert error.retryable  # the operator may fix it before the task's last attempt
            assert error.message == signing.MISCONFIGURED
            assert "AT_WEBHOOK_SECRET" in error.message
            assert error.detail == (
                "AT_WEBHOOK_SECRET (secret 1 of 1) decodes to 16 bytes: "
                "expected whsec_ followed by the base64 of 24 to 64 random bytes"
            )
        with pytest.raises(ConfigurationError, match="AT_WEBHOOK_SECRET"):
            signing.signer()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # loud once per execution environment; each attempt has its own WARNING line
    assert "AT_WEBHOOK_SECRET" in errors[0].error  # type: ignore[attr-defined]
    assert secret[6:] not in repr([record.__dict__ for record in caplog.records])  # extra fields included


def test_a_fixed_secret_is_picked_up_after_the_retry_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", "not-a-secret")
    with pytest.raises(ConfigurationError):
        signing.signer()
    fixed = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET", fixed)
    signing.signing_settings.cache_clear()  # as a restarted process would read it
    with pytest.raises(ConfigurationError):
        signing.signer()  # the failure is remembered for RETRY_LOAD_SECONDS
    monkeypatch.setattr(signing._loader(), "retry_at", time.monotonic())  # the interval is over
    assert signing.signer() is not None


def test_both_variables_set_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AT_WEBHOOK_SECRET", new_secret())
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:at-hooks-AbCdEf")
    with pytest.raises(ConfigurationError, match="AT_WEBHOOK_SECRET and AT_WEBHOOK_SECRET_ARN are both set"):
        signing.signer()


def test_a_secret_put_in_the_arn_variable_is_refused_without_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_secret()
    monkeypatch.setenv("AT_WEBHOOK_SECRET_ARN", secret)
    with pytest.raises(ConfigurationError) as caught:
        signing.signer()  # before any AWS call: its error would quote the SecretId
    assert str(caught.value).startswith("AT_WEBHOOK_SECRET_ARN is not a Secrets Manager secret ARN")
    assert secret[6:] not in str(caught.value)
