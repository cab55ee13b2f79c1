"""atcore.config (DB_* variables, the Secrets Manager secret) and atcore.db's TLS settings."""

from __future__ import annotations

import json
import os
import ssl

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from pydantic import ValidationError

from atcore import config
from atcore.config import DatabaseSettings, database_settings
from atcore.db import _ssl_context
from atcore.env import ConfigurationError
from atcore.errors import DatabaseUnavailable

SECRET_PASSWORD = "s3cr3t-Pa55word-from-secrets-manager"


@pytest.fixture
def env(monkeypatch):
    """No DB_* or AWS_* from the outside world; the settings cache is cleared around each test."""
    for key in list(os.environ):
        if key.startswith(("DB_", "AWS_")):
            monkeypatch.delenv(key)
    database_settings.cache_clear()
    yield monkeypatch
    database_settings.cache_clear()


@pytest.fixture
def aws(env, tmp_path):
    """Fake credentials and region, no config files, and moto in place of AWS."""
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_SECURITY_TOKEN", "testing")
    env.setenv("AWS_SESSION_TOKEN", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def create_secret(client, value: dict) -> str:
    return client.create_secret(Name="at/db", SecretString=json.dumps(value))["ARN"]


# --- DB_* variables ---------------------------------------------------------------------------


def test_defaults_without_any_variable(env):
    settings = database_settings()
    assert settings == DatabaseSettings()
    assert (settings.host, settings.port, settings.user, settings.password, settings.name) == (
        "127.0.0.1",
        5432,
        "postgres",
        None,
        "at_scheduler",
    )
    assert (settings.sslmode, settings.sslrootcert, settings.secret_arn) == ("disable", None, None)
    assert (settings.connect_timeout, settings.statement_timeout_ms) == (3.0, 4_000)


def test_every_variable_is_read(env):
    values = {
        "DB_HOST": "db.internal", "DB_PORT": "6543", "DB_USER": "at_app", "DB_PASSWORD": "pw",
        "DB_NAME": "at_prod", "DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": "/opt/rds-ca.pem",
        "DB_CONNECT_TIMEOUT": "2.5", "DB_STATEMENT_TIMEOUT_MS": "3000",
    }  # fmt: skip
    for key, value in values.items():
        env.setenv(key, value)
    settings = database_settings()
    assert settings.model_dump() == {
        "host": "db.internal", "port": 6543, "user": "at_app", "password": "pw", "name": "at_prod",
        "sslmode": "verify-full", "sslrootcert": "/opt/rds-ca.pem", "secret_arn": None,
        "connect_timeout": 2.5, "statement_timeout_ms": 3000,
    }  # fmt: skip


def test_empty_variables_count_as_unset(env):
    for key in ("DB_HOST", "DB_PORT", "DB_PASSWORD", "DB_SSLMODE", "DB_SECRET_ARN"):
        env.setenv(key, "")
    assert database_settings() == DatabaseSettings()


@pytest.mark.parametrize("port, expected", [("5433", 5433), (" 5433 ", 5433), ("1", 1), ("65535", 65535)])
def test_db_port_is_parsed(env, port, expected):
    env.setenv("DB_PORT", port)
    assert database_settings().port == expected


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DB_PORT", "abc"),
        ("DB_PORT", "0"),
        ("DB_PORT", "65536"),
        ("DB_PORT", "54.5"),
        ("DB_SSLMODE", "prefer"),
        ("DB_SSLMODE", "REQUIRE"),
        ("DB_SSLMODE", "verify-ca"),
        ("DB_CONNECT_TIMEOUT", "0"),
        ("DB_CONNECT_TIMEOUT", "soon"),
        ("DB_STATEMENT_TIMEOUT_MS", "-1"),
    ],
)
def test_bad_values_raise_a_configuration_error_naming_the_variable(env, variable, value):
    env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        database_settings()
    assert f"{variable}={value!r}" in str(raised.value)


def test_settings_are_read_once_until_the_cache_is_cleared(env):
    env.setenv("DB_HOST", "first")
    first = database_settings()
    env.setenv("DB_HOST", "second")
    assert database_settings() is first and first.host == "first"
    database_settings.cache_clear()
    assert database_settings().host == "second"


def test_settings_are_frozen_and_the_password_is_not_in_repr(env):
    env.setenv("DB_PASSWORD", "hunter2-hunter2")
    settings = database_settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    with pytest.raises(ValidationError):
        settings.password = "other"  # type: ignore[misc]


# --- Secrets Manager --------------------------------------------------------------------------


def test_rds_secret_values_win_over_the_environment(aws, env):
    arn = create_secret(
        aws,
        {
            "engine": "postgres",
            "username": "at_app",
            "password": SECRET_PASSWORD,
            "host": "at.cluster-abc.us-east-1.rds.amazonaws.com",
            "port": 5433,
            "dbname": "at_prod",
        },
    )
    aws_env = {
        "DB_SECRET_ARN": arn,
        "DB_HOST": "env-host",
        "DB_USER": "env-user",
        "DB_PASSWORD": "env-password",
        "DB_NAME": "env-db",
        "DB_PORT": "6000",
        "DB_SSLMODE": "require",
    }
    for key, value in aws_env.items():
        env.setenv(key, value)
    settings = database_settings()
    assert (settings.host, settings.port, settings.user, settings.password, settings.name) == (
        "at.cluster-abc.us-east-1.rds.amazonaws.com",
        5433,
        "at_app",
        SECRET_PASSWORD,
        "at_prod",
    )
    assert settings.sslmode == "require" and settings.secret_arn == arn  # not in the secret: from the env
    assert SECRET_PASSWORD not in repr(settings) and SECRET_PASSWORD not in str(settings)


def test_a_secret_with_only_credentials_keeps_host_port_and_name_from_the_environment(aws, env):
    arn = create_secret(aws, {"username": "at_app", "password": SECRET_PASSWORD, "host": "", "port": None})
    env.setenv("DB_SECRET_ARN", arn)
    env.setenv("DB_HOST", "env-host")
    env.setenv("DB_PORT", "6000")
    env.setenv("DB_NAME", "env-db")
    settings = database_settings()
    assert (settings.host, settings.port, settings.user, settings.password, settings.name) == (
        "env-host",
        6000,
        "at_app",
        SECRET_PASSWORD,
        "env-db",
    )


def test_a_port_given_as_text_in_the_secret_is_parsed(aws, env):
    env.setenv("DB_SECRET_ARN", create_secret(aws, {"username": "u", "password": "p", "port": "5433"}))
    assert database_settings().port == 5433


def test_the_secret_is_fetched_once_per_execution_environment(aws, env):
    arn = create_secret(aws, {"username": "at_app", "password": SECRET_PASSWORD})
    env.setenv("DB_SECRET_ARN", arn)
    first = database_settings()
    aws.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    assert database_settings() is first  # served from the cache: no second call
    database_settings.cache_clear()
    with pytest.raises(DatabaseUnavailable):  # and really gone, so the cache was what answered
        database_settings()


def test_a_missing_secret_is_an_error_not_silent_defaults(aws, env):
    # An unavailable secret is a 503 for the request (DatabaseUnavailable), never silent defaults.
    env.setenv("DB_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:at/none-AbCdEf")
    with pytest.raises(DatabaseUnavailable) as caught:
        database_settings()
    assert isinstance(caught.value.__cause__, ClientError)


def test_no_secret_arn_means_no_aws_call(env, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Secrets Manager must not be called without DB_SECRET_ARN")

    monkeypatch.setattr(config, "_fields_from_secret", refuse)
    env.setenv("DB_PASSWORD", "pw")
    assert database_settings().password == "pw"


# --- TLS --------------------------------------------------------------------------------------


def test_sslmode_disable_means_no_tls():
    assert _ssl_context(DatabaseSettings(sslmode="disable")) is False


def test_sslmode_require_encrypts_without_verifying():
    context = _ssl_context(DatabaseSettings(sslmode="require"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_sslmode_verify_full_verifies_the_chain_and_the_host_name():
    context = _ssl_context(DatabaseSettings(sslmode="verify-full"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_verify_full_trusts_only_the_given_root_certificate(tmp_path):
    pem = ssl.DER_cert_to_PEM_cert(_any_system_ca_der())
    (tmp_path / "root.pem").write_text(pem)
    context = _ssl_context(DatabaseSettings(sslmode="verify-full", sslrootcert=str(tmp_path / "root.pem")))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert len(context.get_ca_certs()) == 1


def test_verify_full_with_a_missing_root_certificate_fails(tmp_path):
    with pytest.raises(OSError):
        _ssl_context(DatabaseSettings(sslmode="verify-full", sslrootcert=str(tmp_path / "missing.pem")))


def _any_system_ca_der() -> bytes:
    context = ssl.create_default_context()
    context.load_default_certs()
    certs = context.get_ca_certs(binary_form=True)
    if not certs:
        paths = ssl.get_default_verify_paths()
        for candidate in (paths.cafile, paths.openssl_cafile):
            if candidate and os.path.exists(candidate):
                context.load_verify_locations(cafile=candidate)
                certs = context.get_ca_certs(binary_form=True)
                break
    if not certs:
        pytest.skip("no system CA certificate to use as a root")
    return certs[0]
