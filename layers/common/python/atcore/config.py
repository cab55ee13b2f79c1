"""Configuration from the environment, read once per execution environment (lazily).

Names are the original service's (DB_HOST, DB_PORT, ...). On AWS the credentials may come
from a Secrets Manager secret (DB_SECRET_ARN) in the RDS format
{"username", "password", "host"?, "port"?, "dbname"?}; values in the secret win.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "postgres"
    password: str | None = Field(default=None, repr=False)
    name: str = "at_scheduler"
    sslmode: Literal["disable", "require", "verify-full"] = "disable"
    sslrootcert: str | None = None
    secret_arn: str | None = None
    # Connect + statement timeouts stay inside the API functions' 10 s Lambda timeout, so a
    # stalled database is our 503, not API Gateway's 502 or 504.
    connect_timeout: float = Field(default=3.0, gt=0)
    statement_timeout_ms: int = Field(default=4_000, ge=0)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def _fields_from_env() -> dict[str, str]:
    mapping = {
        "host": "DB_HOST",
        "port": "DB_PORT",
        "user": "DB_USER",
        "password": "DB_PASSWORD",
        "name": "DB_NAME",
        "sslmode": "DB_SSLMODE",
        "sslrootcert": "DB_SSLROOTCERT",
        "secret_arn": "DB_SECRET_ARN",
        "connect_timeout": "DB_CONNECT_TIMEOUT",
        "statement_timeout_ms": "DB_STATEMENT_TIMEOUT_MS",
    }
    return {field: value for field, var in mapping.items() if (value := _env(var)) is not None}


def _fields_from_secret(secret_arn: str) -> dict[str, object]:
    # Imported here: only functions configured with a secret pay for boto3.
    import boto3
    from botocore.config import Config

    # Bounded well inside a Lambda timeout; a failure is a 503 and the next request tries again.
    client = boto3.client("secretsmanager", config=Config(connect_timeout=2, read_timeout=3,
                                                          retries={"mode": "standard", "max_attempts": 2}))
    try:
        secret = client.get_secret_value(SecretId=secret_arn)
    except Exception as exc:  # any SDK or network error: the credentials are unavailable now
        from atcore.errors import DatabaseUnavailable

        raise DatabaseUnavailable("database credentials are unavailable, try again later") from exc
    data = json.loads(secret["SecretString"])
    keys = {"username": "user", "password": "password", "host": "host", "port": "port", "dbname": "name"}
    return {field: data[key] for key, field in keys.items() if data.get(key) not in (None, "")}


@functools.cache
def database_settings() -> DatabaseSettings:
    fields: dict[str, object] = dict(_fields_from_env())
    if secret_arn := fields.get("secret_arn"):
        fields.update(_fields_from_secret(str(secret_arn)))
    return DatabaseSettings.model_validate(fields)
