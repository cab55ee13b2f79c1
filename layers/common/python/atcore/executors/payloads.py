"""Validating task payloads with pydantic, and turning its errors into one readable line.

A malformed payload can never succeed, so it always fails non-retryable, with a message that names
the field ("payload.url: must be an http(s) URL"): the message is stored with the task and is what
the task's owner sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ExecutionError

# Strict: JSON `true` is not an integer and `5` is not a string. Unknown fields are ignored, as the
# original service ignored them (its clients may carry extra metadata in payloads).
PAYLOAD_CONFIG = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

_MAX_ERRORS_SHOWN = 3

_FIXED_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "list_type": "must be a list",
    "string_unicode": "must be a string",
}


class FieldError(ValueError):
    """Raised by a model-level validator to blame one field (pydantic would blame the whole payload)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def payload_error(field: str | None, message: str) -> ExecutionError:
    where = f"payload.{field}" if field else "payload"
    return ExecutionError(f"{where}: {message}", retryable=False)


def parse_payload[Model: BaseModel](model: type[Model], payload: object) -> Model:
    if not isinstance(payload, dict):
        raise payload_error(None, "must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ExecutionError(describe_validation_error(exc), retryable=False) from None


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [_describe_one(error) for error in errors[:_MAX_ERRORS_SHOWN]]
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _describe_one(error: Any) -> str:
    location: list[str | int] = list(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        location.append(cause.field)
    return f"{_format_location(location)}: {_message(error)}"


def _format_location(location: Sequence[str | int]) -> str:
    text = "payload"
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _message(error: Any) -> str:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    if kind in _FIXED_MESSAGES:
        return _FIXED_MESSAGES[kind]
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if kind == "string_too_short":
        return "must not be empty" if ctx["min_length"] == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    message: str = error["msg"]
    return message[:1].lower() + message[1:]
