"""Field rules of the API (docs/API.md), checked on the models alone (no database, no sockets)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from atcore.models import (
    CreateTaskRequest,
    Task,
    format_timestamp,
    parse_limit,
    parse_offset,
    parse_status_filter,
    parse_task_id,
)

FUTURE = "2099-01-01T12:00:00Z"


def create(**fields):
    body = {"execute_at": FUTURE, "task_type": "send_email", "payload": {"a": 1}} | fields
    return CreateTaskRequest.model_validate(body)


def error_of(**fields) -> str:
    with pytest.raises(ValidationError) as caught:
        create(**fields)
    return str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2099-01-01T12:00:00Z", datetime(2099, 1, 1, 12, tzinfo=UTC)),
        ("2099-01-01T12:00:00+03:00", datetime(2099, 1, 1, 9, tzinfo=UTC)),
        ("2099-01-01t12:00:00.5z", datetime(2099, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2099-01-01T12:00:00.123456789-00:30", datetime(2099, 1, 1, 12, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_execute_at_accepts_rfc3339_with_offset(text, expected):
    assert create(execute_at=text).execute_at == expected


@pytest.mark.parametrize(
    "text",
    [
        "2099-01-01T12:00:00",
        "2099-01-01",
        "2099-01-01 12:00:00Z",
        "2099-13-01T12:00:00Z",
        "2099-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "tomorrow",
        "2099-01-01T12:00:00+0300",
        4102444800,
        None,
    ],
)
def test_execute_at_rejects_other_forms(text):
    assert "execute_at must be RFC 3339 with a timezone" in error_of(execute_at=text)


def test_execute_at_must_be_in_the_future():
    past = format_timestamp(datetime.now(UTC) - timedelta(seconds=1))
    assert "execute_at must be in the future" in error_of(execute_at=past)


def test_execute_at_is_required():
    with pytest.raises(ValidationError) as caught:
        CreateTaskRequest.model_validate({"task_type": "x", "payload": 1})
    assert caught.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize("task_type", ["a", "x" * 50, "é" * 50, "日本語のタスク", "'; DROP TABLE scheduled_tasks; --"])
def test_task_type_counts_characters_not_bytes(task_type):
    assert create(task_type=task_type).task_type == task_type


@pytest.mark.parametrize("task_type", ["", "x" * 51, "é" * 51, "tab\there", "nul\x00", "\x7f", 5, None, ["a"]])
def test_task_type_rejects_bad_values(task_type):
    assert "task_type" in error_of(task_type=task_type)


@pytest.mark.parametrize("payload", [{"a": 1}, [], "text", 0, False, 1.5, {"nested": {"deep": [1, "два"]}}])
def test_payload_accepts_any_json_but_null(payload):
    assert create(payload=payload).payload == payload


@pytest.mark.parametrize(
    "payload, message",
    [
        (None, "payload must not be null"),
        ({"a": "x\x00"}, "NUL"),
        ({"\x00": 1}, "NUL"),
        (["\ud800"], "lone surrogates"),
        ({"n": float("inf")}, "finite"),
        ([float("nan")], "finite"),
    ],
)
def test_payload_rejects_what_jsonb_cannot_store(payload, message):
    assert message in error_of(payload=payload)


@pytest.mark.parametrize("value", [1, 3, 100])
def test_max_attempts_accepts_1_to_100(value):
    assert create(max_attempts=value).max_attempts == value


def test_max_attempts_defaults_to_3_when_absent_or_null():
    assert create().max_attempts == 3
    assert create(max_attempts=None).max_attempts == 3


@pytest.mark.parametrize("value", [0, 101, -1, True, 3.5, 3.0, "3", [3]])
def test_max_attempts_rejects_non_integers_and_out_of_range(value):
    assert "max_attempts must be an integer from 1 to 100" in error_of(max_attempts=value)


def test_unknown_fields_are_ignored():
    assert not hasattr(create(colour="blue"), "colour")


@pytest.mark.parametrize("raw, expected", [("1", 1), ("42", 42), ("9223372036854775807", 2**63 - 1)])
def test_task_id_accepts_decimal_digits(raw, expected):
    assert parse_task_id(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "1.5", "1e3", "+5", " 5", "٣", "9223372036854775808", "", "0x10"])
def test_task_id_rejects_everything_else(raw):
    with pytest.raises(ValueError, match="id must be an integer"):
        parse_task_id(raw)


@pytest.mark.parametrize(
    "raw, expected", [(None, 50), ("", 50), ("0", 50), ("1", 1), ("100", 100), ("101", 100), ("99999999999", 100)]
)
def test_limit_defaults_and_clamps(raw, expected):
    assert parse_limit(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5", "1e2"])
def test_limit_rejects_negative_and_non_integers(raw):
    with pytest.raises(ValueError, match="limit must be a non-negative integer"):
        parse_limit(raw)


def test_offset_rules():
    assert parse_offset(None) == 0
    assert parse_offset("20") == 20
    for raw in ("-1", "x", "99999999999999999999"):
        with pytest.raises(ValueError, match="offset must be a non-negative integer"):
            parse_offset(raw)


def test_status_filter_accepts_only_known_statuses():
    assert parse_status_filter("pending") == "pending"
    assert parse_status_filter(None) is None
    with pytest.raises(ValueError, match="status must be one of"):
        parse_status_filter("done")


@pytest.mark.parametrize(
    "moment, text",
    [
        (datetime(2025, 11, 10, 15, 0, tzinfo=UTC), "2025-11-10T15:00:00Z"),
        (datetime(2025, 11, 10, 15, 0, 0, 120000, tzinfo=UTC), "2025-11-10T15:00:00.12Z"),
        (datetime(2025, 11, 10, 18, 0, tzinfo=timezone(timedelta(hours=3))), "2025-11-10T15:00:00Z"),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00Z"),
    ],
)
def test_timestamps_are_utc_with_z_and_trimmed_fraction(moment, text):
    assert format_timestamp(moment) == text


def test_task_omits_unset_completed_at_and_error_message():
    now = datetime(2025, 11, 10, 15, tzinfo=UTC)
    task = Task(
        id=1,
        execute_at=now,
        task_type="t",
        payload={},
        status="pending",
        attempts=0,
        max_attempts=3,
        created_at=now,
        updated_at=now,
    )
    dumped = task.model_dump(mode="json")
    assert "completed_at" not in dumped and "error_message" not in dumped
    assert dumped["execute_at"] == "2025-11-10T15:00:00Z"
