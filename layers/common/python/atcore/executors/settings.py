"""The executors' settings, from the environment (atcore.env: typed, cached, failing loudly)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from atcore.env import settings_reader


class ExecutorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    http_timeout_seconds: float = Field(default=10.0, gt=0, le=900, alias="AT_HTTP_TIMEOUT_SECONDS")
    # The local run calls sinks on 127.0.0.1; never metadata or link-local (see safety.py).
    allow_private: bool = Field(default=False, alias="AT_HTTP_ALLOW_PRIVATE")
    outbox_dir: str = Field(default=os.path.join(".local", "outbox"), alias="AT_OUTBOX_DIR")
    aws_delivery: bool = Field(default=False, alias="AT_AWS_DELIVERY")
    email_from: str | None = Field(default=None, alias="AT_EMAIL_FROM")
    # On AWS: the only senders the worker may use (EmailFrom + AllowedEmailSenders), lower case.
    email_allowed_from: frozenset[str] = Field(default=frozenset(), alias="AT_EMAIL_ALLOWED_FROM")
    sqs_default_queue_url: str | None = Field(default=None, alias="AT_SQS_DEFAULT_QUEUE_URL")
    aws_region: str | None = Field(default=None, alias="AWS_REGION")
    # An emulator or a private endpoint (botocore's own names; _SES is accepted for SES v2 too).
    endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    endpoint_url_sesv2: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_SESV2")
    endpoint_url_ses: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_SES")
    endpoint_url_sns: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_SNS")
    endpoint_url_sqs: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_SQS")
    # Lambda sets both in every execution environment (its runtime API listens on 127.0.0.1:9001).
    lambda_function_name: str | None = Field(default=None, alias="AWS_LAMBDA_FUNCTION_NAME")
    lambda_runtime_api: str | None = Field(default=None, alias="AWS_LAMBDA_RUNTIME_API")

    @field_validator("email_allowed_from", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @property
    def running_on_lambda(self) -> bool:
        return bool(self.lambda_function_name or self.lambda_runtime_api)

    def endpoint_for(self, service: str) -> str | None:
        specific = {
            "sesv2": self.endpoint_url_sesv2 or self.endpoint_url_ses,
            "sns": self.endpoint_url_sns,
            "sqs": self.endpoint_url_sqs,
        }.get(service)
        return specific or self.endpoint_url


executor_settings = settings_reader(ExecutorSettings)


class SigningSettings(BaseModel):
    """Where http_callback's Standard Webhooks signing secret comes from.

    Read as text and checked by signing.py, whose messages never quote a value (a pydantic
    validator's error would); SecretStr keeps the secret out of repr()."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    # Locally: "whsec_<base64>", several separated by spaces (all of them sign, for rotation).
    secret: SecretStr | None = Field(default=None, alias="AT_WEBHOOK_SECRET")
    # On AWS: a Secrets Manager secret whose SecretString holds that text (template: WebhookSecretArn).
    secret_arn: str | None = Field(default=None, alias="AT_WEBHOOK_SECRET_ARN")


signing_settings = settings_reader(SigningSettings)


def http_timeout_seconds() -> float:
    return executor_settings().http_timeout_seconds


def private_destinations_allowed() -> bool:
    return executor_settings().allow_private


def running_on_lambda() -> bool:
    return executor_settings().running_on_lambda
