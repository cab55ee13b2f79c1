"""Configuration from the environment, read once per execution environment (lazily).

Names are the original service's (DB_HOST, DB_PORT, ...). On AWS the credentials may come
from a Secrets Manager secret (DB_SECRET_ARN) in the RDS format
{"username", "password", "host"?, "port"?, "dbname"?}; values in the secret win.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from atcore.env import cached, from_environment


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    host: str = Field(default="127.0.0.1", alias="DB_HOST")
    port: int = Field(default=5432, ge=1, le=65535, alias="DB_PORT")
    user: str = Field(default="postgres", alias="DB_USER")
    password: str | None = Field(default=None, repr=False, alias="DB_PASSWORD")
    name: str = Field(default="at_scheduler", alias="DB_NAME")
    sslmode: Literal["disable", "require", "verify-full"] = Field(default="disable", alias="DB_SSLMODE")
    sslrootcert: str | None = Field(default=None, alias="DB_SSLROOTCERT")
    secret_arn: str | None = Field(default=None, alias="DB_SECRET_ARN")
    # Connect + statement timeouts stay inside the API functions' 10 s Lambda timeout, so a
    # stalled database is our 503, not API Gateway's 502 or 504.
    connect_timeout: float = Field(default=3.0, gt=0, alias="DB_CONNECT_TIMEOUT")
    statement_timeout_ms: int = Field(default=4_000, ge=0, alias="DB_STATEMENT_TIMEOUT_MS")


def _fields_from_secret(secret_arn: str) -> dict[str, object]:
    # Imported here: only functions configured with a secret pay for boto3.
    import boto3
    from botocore.config import Config

    # Bounded well inside a Lambda timeout; a failure is a 503 and the next request tries again.
    client = boto3.client(
        "secretsmanager",
        config=Config(connect_timeout=2, read_timeout=3, retries={"mode": "standard", "max_attempts": 2}),
    )
    try:
        secret = client.get_secret_value(SecretId=secret_arn)
    except Exception as exc:  # any SDK or network error: the credentials are unavailable now
        from atcore.errors import DatabaseUnavailable

        raise DatabaseUnavailable("database credentials are unavailable, try again later") from exc
    data = json.loads(secret["SecretString"])
    keys = {"username": "user", "password": "password", "host": "host", "port": "port", "dbname": "name"}
    return {field: data[key] for key, field in keys.items() if data.get(key) not in (None, "")}


@cached
def database_settings() -> DatabaseSettings:
    settings = from_environment(DatabaseSettings)
    if settings.secret_arn:
        return from_environment(DatabaseSettings, **_fields_from_secret(settings.secret_arn))
    return settings
