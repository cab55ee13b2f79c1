"""sqs_message: one message to an Amazon SQS queue, or the local outbox.

Payload: {"queue_url"?: str (default AT_SQS_DEFAULT_QUEUE_URL), "body": JSON (strings sent as they
are, anything else JSON-encoded), "message_group_id"?, "deduplication_id"?, "delay_seconds"?: 0-900,
"attributes"?: {str: str}}
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from . import aws, outbox
from .payloads import PAYLOAD_CONFIG, parse_payload, payload_error
from .settings import executor_settings

MAX_ATTRIBUTES = 10  # SQS's limit per message

_QUEUE_URL = re.compile(r"https?://[^\s/]+/\S+")
_MESSAGE_ID_TOKEN = re.compile(r"[!-~]{1,128}")  # group / deduplication ids: 1-128 printable ASCII
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.\-]{1,256}")
# What SQS refuses in a body: it accepts only #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF.
_FORBIDDEN_BODY_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class SqsPayload(BaseModel):
    model_config = PAYLOAD_CONFIG

    queue_url: str | None = None
    body: Any = Field()  # required, any JSON value
    message_group_id: str | None = None
    deduplication_id: str | None = None
    delay_seconds: int | None = Field(default=None, ge=0, le=900)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)

    @field_validator("queue_url")
    @classmethod
    def _queue_url_is_url(cls, url: str | None) -> str | None:
        if url is not None and not _QUEUE_URL.fullmatch(url):
            raise ValueError("must be an http(s) SQS queue URL")
        return url

    @field_validator("body")
    @classmethod
    def _body_is_sendable(cls, body: Any) -> Any:
        encoded = encode_body(body)
        if not encoded:
            raise ValueError("must not be empty")
        if _FORBIDDEN_BODY_CHARACTER.search(encoded):
            raise ValueError("contains characters SQS does not accept")
        return body

    @field_validator("message_group_id", "deduplication_id")
    @classmethod
    def _id_is_token(cls, value: str | None) -> str | None:
        if value is not None and not _MESSAGE_ID_TOKEN.fullmatch(value):
            raise ValueError("must be 1-128 printable ASCII characters without spaces")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes_are_valid(cls, attributes: dict[str, str]) -> dict[str, str]:
        for name, value in attributes.items():
            if not _ATTRIBUTE_NAME.fullmatch(name) or name.lower().startswith(("aws.", "amazon.")):
                raise ValueError(f"{name[:50]!r} is not a valid attribute name")
            if not value:
                raise ValueError(f"attribute {name!r} must not be empty")
        return attributes


def encode_body(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def is_fifo(queue_url: str) -> bool:
    return queue_url.rstrip("/").endswith(".fifo")


def run(task_id: int, payload: object, attempt: int, *, deadline: float) -> dict[str, object]:
    message = parse_payload(SqsPayload, payload)
    request = sqs_request(message, task_id)
    if not aws.delivery_enabled("sqs"):
        outbox.deliver("sqs", task_id, attempt, outbox_message(request))
        return {"delivery": "outbox"}
    with aws.sdk_call("SQS SendMessage", denied="the worker is not allowed to send to this queue"):
        response = aws.client("sqs", deadline).send_message(**request)
    return {"delivery": "sqs", "message_id": response.get("MessageId")}


def sqs_request(message: SqsPayload, task_id: int) -> dict[str, Any]:
    queue_url = message.queue_url or executor_settings().sqs_default_queue_url
    if queue_url is None:
        raise payload_error("queue_url", "is required (no default queue: AT_SQS_DEFAULT_QUEUE_URL is not set)")
    fifo = is_fifo(queue_url)
    request: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": encode_body(message.body)}
    if fifo:
        if message.delay_seconds:
            raise payload_error("delay_seconds", "is not supported by FIFO queues (only a queue-wide delay is)")
        # Same id on every attempt: SQS drops a retry's duplicate within its 5-minute window.
        request["MessageDeduplicationId"] = message.deduplication_id or f"at-task-{task_id}"
        # FIFO requires a group; one per task means no ordering and no head-of-line blocking.
        request["MessageGroupId"] = message.message_group_id or f"at-task-{task_id}"
    else:
        if message.deduplication_id is not None:
            raise payload_error("deduplication_id", "is only accepted by FIFO queues (.fifo)")
        if message.message_group_id is not None:
            request["MessageGroupId"] = message.message_group_id  # fair queues
        if message.delay_seconds is not None:
            request["DelaySeconds"] = message.delay_seconds
    if message.attributes:
        request["MessageAttributes"] = {
            name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items()
        }
    return request


def outbox_message(request: dict[str, Any]) -> dict[str, object]:
    attributes = {name: spec["StringValue"] for name, spec in request.get("MessageAttributes", {}).items()}
    return {
        "queue_url": request["QueueUrl"],
        "body": request["MessageBody"],
        "message_group_id": request.get("MessageGroupId"),
        "deduplication_id": request.get("MessageDeduplicationId"),
        "delay_seconds": request.get("DelaySeconds"),
        "attributes": attributes,
    }
