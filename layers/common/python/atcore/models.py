"""The request and response shapes of the API: the one definition (the OpenAPI document is
generated from these). Every rule of the API (docs/API.md) about a field lives here, with the message a
client sees when it breaks it."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from atcore.text import NO_CONTROL_CHARACTERS_PATTERN, has_control_characters

INT64_MAX = 9_223_372_036_854_775_807
TASK_TYPE_MAX_LENGTH = 50
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_BODY_BYTES = 256 * 1024
# The payload as AT stores and answers it (compact JSON, UTF-8): see check_stored_payload_size.
MAX_STORED_PAYLOAD_BYTES = 1024 * 1024
# A cursor is base64url of a small JSON object; the longest one made today (a 50-character
# task_type of 4-byte characters, the largest id) has 380 characters.
CURSOR_MAX_LENGTH = 1024
# Deeper payloads could be stored but not answered: the response serializer (pydantic-core) gives
# up near 255 levels, which made create, read and every list page holding the task a 500.
MAX_PAYLOAD_DEPTH = 100
MAX_BATCH_TASKS = 1000
MAX_BATCH_BODY_BYTES = 5 * 1024 * 1024
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# An attempt history is answered whole up to this many attempts (a task retried again and again
# would otherwise grow past what one response carries); `total` counts them all.
MAX_ATTEMPTS_LISTED = 1000


class TaskStatus(StrEnum):
    # Same words as the CHECK constraint in db/migrations/0001_scheduled_tasks.sql.
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


CANCELLABLE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.PROCESSING})
CHANGEABLE_STATUSES = frozenset({TaskStatus.PENDING})  # PATCH
RETRYABLE_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})  # POST .../retry
STATUS_CHOICES = ", ".join(TaskStatus)

# RFC 3339 date-time with a mandatory offset; fromisoformat alone would also take
# zone-less and week-date forms.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_DIGITS = re.compile(r"[0-9]+")


def format_timestamp(value: datetime) -> str:
    """UTC, `Z` suffix, sub-second digits only when non-zero (docs/API.md)."""
    utc = value.astimezone(UTC)
    text = utc.replace(tzinfo=None, microsecond=0).isoformat()
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time"}
UtcTimestamp = Annotated[
    datetime, PlainSerializer(format_timestamp, return_type=str), WithJsonSchema(_TIMESTAMP_SCHEMA)
]


def parse_timestamp(name: str, value: object) -> datetime:
    """An RFC 3339 date-time with an offset, in UTC; ValueError naming the field `name` otherwise."""
    message = f"{name} must be RFC 3339 with a timezone, e.g. 2030-01-01T12:00:00Z"
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(message)
    try:
        parsed = datetime.fromisoformat(value.upper())
        return parsed.astimezone(UTC)  # out-of-range dates (year 0, leap second 60) fail here
    except (ValueError, OverflowError):
        raise ValueError(message) from None


def parse_execute_at(value: object) -> datetime:
    return parse_timestamp("execute_at", value)


def require_future(value: datetime) -> datetime:
    if value <= datetime.now(UTC):
        raise ValueError("execute_at must be in the future")
    return value


def check_task_type(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("task_type must be a string")
    if not 1 <= len(value) <= TASK_TYPE_MAX_LENGTH:
        raise ValueError(f"task_type must be 1 to {TASK_TYPE_MAX_LENGTH} characters long")
    if has_control_characters(value):
        raise ValueError("task_type must not contain control characters")
    return value


def check_payload(value: object) -> object:
    if value is None:
        raise ValueError("payload must not be null")
    ensure_storable_json(value)
    return value


def ensure_storable_json(value: object) -> None:
    """PostgreSQL's jsonb refuses NUL characters, lone surrogates and non-finite numbers, and
    the API cannot answer with payloads nested beyond MAX_PAYLOAD_DEPTH; find them here so the
    client gets a 400 instead of a database error or a 500."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_storable_string(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("payload numbers must be finite")
        elif isinstance(item, dict | list):
            if depth >= MAX_PAYLOAD_DEPTH:
                raise ValueError(f"payload must not be nested more than {MAX_PAYLOAD_DEPTH} levels deep")
            if isinstance(item, dict):
                for key in item:
                    _check_storable_string(key)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def _exponent_growth(value: object) -> int:
    """Bytes the numbers in `value` gain in PostgreSQL: jsonb keeps a number as numeric, which is
    written without an exponent, so a float JSON writes as 1e+300 comes back as 1 and 300 zeros."""
    growth, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            text = repr(item)  # what json.dumps writes; only e+ forms (|x| >= 1e16) lose their exponent
            if "e+" in text:
                growth += int(text.partition("e+")[2]) + 1 + text.startswith("-") - len(text)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return growth


def check_stored_payload_size(payload: object) -> None:
    """A payload must stay within MAX_STORED_PAYLOAD_BYTES as it is answered (compact JSON, UTF-8)
    after PostgreSQL has stored it, so that every answer holding the task fits in one Lambda
    response: a 256 KiB body of 1e308s would be 13 MB of digits. ValueError, with the client's
    message, when it would not."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode("utf-8")) + _exponent_growth(payload)
    if size > MAX_STORED_PAYLOAD_BYTES:
        raise ValueError(
            f"payload would be stored as {size} bytes of JSON, over the limit of {MAX_STORED_PAYLOAD_BYTES} "
            "(PostgreSQL writes numbers out in full: 1e300 takes 301 digits)"
        )


def _check_storable_string(text: str) -> None:
    if "\x00" in text:
        raise ValueError("payload strings must not contain the NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("payload strings must be valid Unicode (no lone surrogates)") from None


def check_max_attempts(value: object) -> int:
    # bool is an int subclass in Python; JSON true is not a number of attempts.
    if value is None:
        return DEFAULT_MAX_ATTEMPTS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}")
    return value


def _decimal(value: object) -> int | None:
    """The number a string of ASCII digits spells, capped just above INT64_MAX (int() would refuse
    4,301 digits with a message about Python); None for anything else."""
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        return None
    significant = value.lstrip("0")
    return INT64_MAX + 1 if len(significant) > len(str(INT64_MAX)) else int(significant or "0")


def parse_task_id(value: object) -> int:
    number = _decimal(value)
    if number is not None and 1 <= number <= INT64_MAX:
        return number
    raise ValueError(f"id must be an integer from 1 to {INT64_MAX}")


def _parse_non_negative(name: str, value: object) -> int | None:
    if value is None or value == "":
        return None
    number = _decimal(value)
    if number is not None and number <= INT64_MAX:
        return number
    raise ValueError(f"{name} must be a non-negative integer")


def parse_limit(value: object) -> int:
    limit = _parse_non_negative("limit", value)
    if not limit:  # absent or 0 means the default page size
        return DEFAULT_PAGE_SIZE
    return min(limit, MAX_PAGE_SIZE)


def parse_offset(value: object) -> int:
    return _parse_non_negative("offset", value) or 0


def parse_status_filter(value: object) -> TaskStatus | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in TaskStatus.__members__.values():
        raise ValueError(f"status must be one of: {STATUS_CHOICES}")
    return TaskStatus(value)


def parse_task_type_filter(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > TASK_TYPE_MAX_LENGTH:
        raise ValueError(f"task_type must be at most {TASK_TYPE_MAX_LENGTH} characters long")
    if has_control_characters(value):  # no task has such a type; and PostgreSQL refuses NUL
        raise ValueError("task_type must not contain control characters")
    return value


def parse_execute_after_filter(value: object) -> datetime | None:
    return None if value is None or value == "" else parse_timestamp("execute_after", value)


def parse_execute_before_filter(value: object) -> datetime | None:
    return None if value is None or value == "" else parse_timestamp("execute_before", value)


# Request parameter types: the validator gives the message, WithJsonSchema the OpenAPI schema of
# what a client may send (which is wider than the parsed value: limit=0 or 500 are accepted).
# (format int64 rather than maximum: Powertools' OpenAPI models hold bounds as floats, inexact at 2**63.)
TaskId = Annotated[
    int, BeforeValidator(parse_task_id), WithJsonSchema({"type": "integer", "format": "int64", "minimum": 1})
]
_LIMIT_MEANING = f"Page size; 0 means {DEFAULT_PAGE_SIZE}, values above {MAX_PAGE_SIZE} mean {MAX_PAGE_SIZE}."
PageLimit = Annotated[
    int,
    BeforeValidator(parse_limit),
    WithJsonSchema({"type": "integer", "format": "int64", "minimum": 0, "description": _LIMIT_MEANING}),
]
PageOffset = Annotated[
    int, BeforeValidator(parse_offset), WithJsonSchema({"type": "integer", "format": "int64", "minimum": 0})
]
StatusFilter = Annotated[
    TaskStatus | None,
    BeforeValidator(parse_status_filter),
    WithJsonSchema({"type": "string", "enum": [status.value for status in TaskStatus]}),
]
TaskTypeFilter = Annotated[
    str | None,
    BeforeValidator(parse_task_type_filter),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": TASK_TYPE_MAX_LENGTH,
            "pattern": NO_CONTROL_CHARACTERS_PATTERN,
            "description": "Exact match.",
        }
    ),
]


CURSOR_MALFORMED = "cursor is malformed: pass the next_cursor of a previous page unchanged"


def parse_cursor_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # a query value is always a string; this is for the type checker
        raise ValueError(CURSOR_MALFORMED)
    return value


_CURSOR_MEANING = (
    "The `next_cursor` of a previous page, with the same filters: the page continues after it (newest first), "
    "however many tasks were created meanwhile. Not with a non-zero `offset`."
)
ExecuteAfterFilter = Annotated[
    datetime | None,
    BeforeValidator(parse_execute_after_filter),
    WithJsonSchema(_TIMESTAMP_SCHEMA | {"description": "Only tasks with execute_at at or after this time."}),
]
ExecuteBeforeFilter = Annotated[
    datetime | None,
    BeforeValidator(parse_execute_before_filter),
    WithJsonSchema(_TIMESTAMP_SCHEMA | {"description": "Only tasks with execute_at before this time."}),
]
PageCursor = Annotated[
    str | None,
    BeforeValidator(parse_cursor_text),
    WithJsonSchema({"type": "string", "maxLength": CURSOR_MAX_LENGTH, "description": _CURSOR_MEANING}),
]


class ListFilters(BaseModel):
    """The filters of GET /api/v1/tasks: what `total` counts and what a cursor belongs to.

    A new filter is a new field here (absent = None): it then counts in every cursor made and
    checked, and cursors made before it stay valid for requests that do not use it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: TaskStatus | None = None
    task_type: str | None = None
    execute_after: UtcTimestamp | None = None  # execute_after <= execute_at < execute_before
    execute_before: UtcTimestamp | None = None


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class _CursorState(BaseModel):
    """What a cursor holds: the page starts below id `before`, for these filters."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: 5.0, "5" and true are not ids

    v: Annotated[int, Field(ge=1, le=1)]  # the format's version (Literal[1] would take true)
    before: Annotated[int, Field(ge=1, le=INT64_MAX)]
    filters: ListFilters


def make_cursor(filters: ListFilters, before: int) -> str:
    """next_cursor: base64url (unpadded) of {"v": 1, "before": <last id shown>, "filters": {...}}.

    Opaque to clients; keyset paging, so the next page is `id < before` with the same filters."""
    state = {"v": 1, "before": before, "filters": filters.model_dump(mode="json", exclude_none=True)}
    raw = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_cursor(text: str, filters: ListFilters) -> int:
    """The id a cursor's page starts below. ValueError, with the client's message, when the text is
    not a cursor this API made, or when it was made for other filters than `filters`."""
    if len(text) > CURSOR_MAX_LENGTH or not _BASE64URL.fullmatch(text):
        raise ValueError(CURSOR_MALFORMED)
    try:
        state = _CursorState.model_validate_json(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:  # binascii.Error and pydantic's ValidationError (not JSON, not our shape) are ValueErrors
        raise ValueError(CURSOR_MALFORMED) from None
    if state.filters != filters:
        made_for, asked = state.filters, filters
        differing = [name for name in ListFilters.model_fields if getattr(made_for, name) != getattr(asked, name)]
        raise ValueError(
            f"cursor was made for other filters ({', '.join(differing)}): send the filters of the page it came "
            "from, or start again without a cursor"
        )
    return state.before


class CreateTaskRequest(BaseModel):
    """Body of POST /api/v1/tasks. Unknown fields are ignored, as the original did."""

    model_config = ConfigDict(extra="ignore")

    execute_at: Annotated[datetime, BeforeValidator(parse_execute_at), AfterValidator(require_future)] = Field(
        description="RFC 3339 date-time with an offset (Z or ±hh:mm), strictly in the future."
    )
    task_type: Annotated[
        str,
        BeforeValidator(check_task_type),  # the rule; the schema below only describes it
        WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": TASK_TYPE_MAX_LENGTH,
                "pattern": NO_CONTROL_CHARACTERS_PATTERN,
            }
        ),
    ] = Field(description="Routes the task to its executor; 1 to 50 characters, no control characters.")
    payload: Annotated[Any, BeforeValidator(check_payload), WithJsonSchema({"not": {"type": "null"}})] = Field(
        description="Any JSON value except null; handed to the executor."
    )
    max_attempts: Annotated[
        int,
        BeforeValidator(check_max_attempts),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT}, {"type": "null"}]}),
    ] = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        description=f'A JSON integer (not 3.0 or "3"); null means the default, {DEFAULT_MAX_ATTEMPTS}.',
    )


def _is_none(value: object) -> bool:
    return value is None


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "default": null next to "type": "string" would read as a contradiction


class Task(BaseModel):
    # completed_at, error_message and created_by are left out while unset, never null.
    id: int
    execute_at: UtcTimestamp
    task_type: str
    payload: Any
    status: TaskStatus
    attempts: int
    max_attempts: int
    created_at: UtcTimestamp
    updated_at: UtcTimestamp
    completed_at: Annotated[UtcTimestamp | None, WithJsonSchema(_TIMESTAMP_SCHEMA, mode="serialization")] = Field(
        default=None,
        exclude_if=_is_none,
        json_schema_extra=_without_default,
        description="Present once completed or failed.",
    )
    error_message: Annotated[str | None, WithJsonSchema({"type": "string"}, mode="serialization")] = Field(
        default=None,
        exclude_if=_is_none,
        json_schema_extra=_without_default,
        description="Present once an attempt has failed.",
    )
    created_by: Annotated[str | None, WithJsonSchema({"type": "string"}, mode="serialization")] = Field(
        default=None,
        exclude_if=_is_none,
        json_schema_extra=_without_default,
        description="Who created it, when the API knew: the IAM principal's ARN or the API key's id.",
    )


class TaskEnvelope(BaseModel):
    task: Task


TASK_LIST = TypeAdapter(list[Task])


class TasksEnvelope(BaseModel):
    tasks: list[Task] = Field(description="In the order of the request.")


class BatchCreateRequest(BaseModel):
    """Body of POST /api/v1/tasks/batch: all of them or none."""

    model_config = ConfigDict(extra="ignore")

    tasks: list[CreateTaskRequest] = Field(min_length=1, max_length=MAX_BATCH_TASKS)


def _future_execute_at(value: object) -> datetime:
    """An execute_at that is given (null is not a time), as a create's."""
    return require_future(parse_execute_at(value))


class PatchTaskRequest(BaseModel):
    """Body of PATCH /api/v1/tasks/{id}: the fields to change (at least one); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    execute_at: Annotated[datetime | None, BeforeValidator(_future_execute_at), WithJsonSchema(_TIMESTAMP_SCHEMA)] = (
        Field(default=None, description="A new time, RFC 3339 with an offset, strictly in the future.")
    )
    payload: Annotated[Any, BeforeValidator(check_payload), WithJsonSchema({"not": {"type": "null"}})] = Field(
        default=None, description="A new payload: any JSON value except null."
    )
    max_attempts: Annotated[
        int | None,
        BeforeValidator(check_max_attempts),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT}, {"type": "null"}]}),
    ] = Field(default=None, description="At least the attempts already made + 1; null means the default, 3.")

    @model_validator(mode="after")
    def _changes_something(self) -> PatchTaskRequest:
        if not self.model_fields_set & {"execute_at", "payload", "max_attempts"}:
            raise ValueError("request body must set at least one of execute_at, payload, max_attempts")
        return self


class RetryTaskRequest(BaseModel):
    """Optional body of POST /api/v1/tasks/{id}/retry."""

    model_config = ConfigDict(extra="ignore")

    execute_at: Annotated[datetime | None, BeforeValidator(_future_execute_at), WithJsonSchema(_TIMESTAMP_SCHEMA)] = (
        Field(default=None, description="When to run it again (in the future); absent: at once.")
    )


class AttemptOutcome(StrEnum):
    # Same words as the CHECK constraint in db/migrations/0004_task_attempts.sql.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    LEASE_EXPIRED = "lease_expired"
    SUPERSEDED = "superseded"


class TaskAttempt(BaseModel):
    number: int = Field(description="1 for the first attempt; numbers keep counting across a retry.")
    started_at: UtcTimestamp
    finished_at: Annotated[UtcTimestamp | None, WithJsonSchema(_TIMESTAMP_SCHEMA, mode="serialization")] = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_without_default, description="Absent while running."
    )
    outcome: AttemptOutcome
    error: Annotated[str | None, WithJsonSchema({"type": "string"}, mode="serialization")] = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_without_default, description="Why, unless succeeded."
    )
    duration_ms: Annotated[int | None, WithJsonSchema({"type": "integer"}, mode="serialization")] = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_without_default, description="Once finished."
    )


class AttemptList(BaseModel):
    attempts: list[TaskAttempt] = Field(description=f"Oldest first; at most {MAX_ATTEMPTS_LISTED}.")
    total: int = Field(description="Every attempt the task has made.")


class StatusCounts(BaseModel):
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int


class TaskStats(BaseModel):
    counts: StatusCounts
    total: int
    oldest_due_age_seconds: float = Field(
        description="How long the most overdue task that has not started has been due (0: none is)."
    )
    next_execute_at: Annotated[UtcTimestamp | None, WithJsonSchema(_TIMESTAMP_SCHEMA, mode="serialization")] = Field(
        default=None,
        exclude_if=_is_none,
        json_schema_extra=_without_default,
        description="When the next pending task falls due; absent when none is waiting for a later time.",
    )


def check_idempotency_key(value: str) -> str:
    """1 to 255 printable ASCII characters (the IETF draft's and Stripe's Idempotency-Key)."""
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX_LENGTH or not all(" " <= char <= "~" for char in value):
        raise ValueError(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters")
    return value


class TaskPage(BaseModel):
    """One page of GET /api/v1/tasks: fewer than `limit` tasks when more would not fit in one response."""

    tasks: list[Task]
    total: int = Field(description="Tasks matching the filters, ignoring limit, offset and cursor.")
    next_cursor: Annotated[str | None, WithJsonSchema({"type": "string"}, mode="serialization")] = Field(
        default=None,
        exclude_if=_is_none,
        json_schema_extra=_without_default,
        description=(
            "Present only when more tasks match beyond this page: pass it as `cursor`, with the same filters, "
            "for the next page. A page holds fewer than `limit` tasks when they would not fit in one response; "
            "then follow next_cursor, or advance `offset` by the number of tasks received."
        ),
    )


@dataclass(frozen=True)
class TaskListing:
    """A page as the database gave it, before atcore.api.page_response fits it into one response."""

    tasks: list[Task]  # at most `limit`, newest first
    total: int
    more: bool  # tasks beyond these match the filters too
    filters: ListFilters

    def cursor_after(self, task: Task) -> str:
        return make_cursor(self.filters, task.id)


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    details: list[ErrorDetail] | None = None
