"""The parts of "pages that always fit" on their own (no database): the envelope measure against
the runtime's marshalling, the page writer with a small budget, the cursor format, and the
stored size of payloads whose numbers PostgreSQL writes out in full."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atcore import api
from atcore.api import MAX_TASK_BYTES, PAGE_BUDGET, dumps_json, envelope_bytes, page_response
from atcore.models import (
    CURSOR_MAX_LENGTH,
    MAX_BODY_BYTES,
    MAX_STORED_PAYLOAD_BYTES,
    TASK_TYPE_MAX_LENGTH,
    ListFilters,
    Task,
    TaskListing,
    TaskPage,
    TaskStatus,
    _exponent_growth,
    check_stored_payload_size,
    make_cursor,
    read_cursor,
)

INT64_MAX = 9_223_372_036_854_775_807
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def runtime_body_bytes(body: str) -> int:
    """What `body` adds to the proxy dict as the python3.13 runtime marshals it (json or simplejson
    with ensure_ascii=False; simplejson also escapes U+2028/U+2029)."""

    def marshal(text: str) -> int:
        dumped = json.dumps({"statusCode": 200, "body": text}, ensure_ascii=False)
        return len(dumped.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8"))

    return marshal(body) - marshal("") + 2  # and its two quotes


@given(JSON_VALUES)
def test_envelope_bytes_is_what_the_runtime_sends(value):
    text = dumps_json(value)
    assert envelope_bytes(text) + 2 == runtime_body_bytes(text)


@given(st.text())
def test_envelope_bytes_of_any_string_value(text):
    body = dumps_json({"s": text})
    assert envelope_bytes(body) + 2 == runtime_body_bytes(body)
    assert envelope_bytes(body) <= 2 * len(body.encode("utf-8"))  # the doubling MAX_TASK_BYTES assumes


def test_bodies_are_utf8_not_escaped():
    assert dumps_json({"é": "🙂\u2028"}) == '{"é":"🙂\u2028"}'
    assert json.loads(dumps_json({"é": "🙂\u2028"})) == {"é": "🙂\u2028"}


def test_the_largest_task_fits_several_times_in_a_page():
    assert api.LAMBDA_RESPONSE_LIMIT == 6_291_456
    assert MAX_TASK_BYTES * 2 < PAGE_BUDGET < api.LAMBDA_RESPONSE_LIMIT
    assert MAX_STORED_PAYLOAD_BYTES >= 4 * MAX_BODY_BYTES  # a 256 KiB body of 1e15s (about 1 MB) is accepted


# --- the page writer ------------------------------------------------------------------------------


def task(task_id: int, payload: object = None, **fields) -> Task:
    moment = datetime(2099, 1, 1, tzinfo=UTC)
    return Task(
        id=task_id,
        execute_at=moment,
        task_type="t",
        payload={"n": task_id} if payload is None else payload,
        status=TaskStatus.PENDING,
        attempts=0,
        max_attempts=3,
        created_at=moment,
        updated_at=moment,
        **fields,
    )


def listing(tasks: list[Task], *, more: bool = False, total: int | None = None, filters=None) -> TaskListing:
    return TaskListing(
        tasks=tasks, total=len(tasks) if total is None else total, more=more, filters=filters or ListFilters()
    )


def body_of(response) -> dict:
    assert response.status_code == 200 and response.content_type == "application/json"
    assert isinstance(response.body, str)  # written once: Powertools passes a str body on as is
    return json.loads(response.body)


def test_a_page_is_the_task_page_shape():
    tasks = [task(3, {"é": [1.5, None]}, error_message="x"), task(2), task(1)]
    body = body_of(page_response(listing(tasks, more=True, total=9)))
    expected = TaskPage(tasks=tasks, total=9, next_cursor=make_cursor(ListFilters(), 1))
    assert body == expected.model_dump(mode="json")
    assert body_of(page_response(listing([], total=4))) == {"tasks": [], "total": 4}
    assert body_of(page_response(listing(tasks))) == TaskPage(tasks=tasks, total=3).model_dump(mode="json")


def test_the_page_stops_before_the_first_task_that_would_not_fit(monkeypatch):
    tasks = [task(i, "x" * 1000) for i in range(10, 0, -1)]
    one = envelope_bytes(dumps_json(tasks[0].model_dump(mode="json"))) + 1
    monkeypatch.setattr(api, "PAGE_BUDGET", 3 * one + one // 2)
    body = body_of(page_response(listing(tasks, filters=ListFilters(task_type="t"))))
    assert [t["id"] for t in body["tasks"]] == [10, 9, 8]
    assert read_cursor(body["next_cursor"], ListFilters(task_type="t")) == 8
    monkeypatch.setattr(api, "PAGE_BUDGET", 3 * one)
    assert len(body_of(page_response(listing(tasks)))["tasks"]) == 3  # exactly full


def test_the_first_task_is_always_shown(monkeypatch):
    monkeypatch.setattr(api, "PAGE_BUDGET", 10)
    body = body_of(page_response(listing([task(2), task(1)])))
    assert [t["id"] for t in body["tasks"]] == [2] and read_cursor(body["next_cursor"], ListFilters()) == 2
    body = body_of(page_response(listing([task(1)])))
    assert [t["id"] for t in body["tasks"]] == [1] and "next_cursor" not in body


# --- cursors --------------------------------------------------------------------------------------


@given(
    st.sampled_from([None, *TaskStatus]),
    st.none() | st.text(min_size=1, max_size=TASK_TYPE_MAX_LENGTH),
    st.integers(1, INT64_MAX),
)
def test_a_cursor_reads_back_for_its_filters_only(status, task_type, before):
    filters = ListFilters(status=status, task_type=task_type)
    cursor = make_cursor(filters, before)
    assert cursor.isascii() and len(cursor) <= CURSOR_MAX_LENGTH and "=" not in cursor
    assert read_cursor(cursor, filters) == before
    other = ListFilters(status=status, task_type=(task_type or "") + "x")
    with pytest.raises(ValueError, match=r"^cursor was made for other filters \(task_type\)"):
        read_cursor(cursor, other)


def test_the_longest_cursor_is_within_its_documented_length():
    longest = make_cursor(ListFilters(status=TaskStatus.PROCESSING, task_type="😀" * TASK_TYPE_MAX_LENGTH), INT64_MAX)
    assert len(longest) == 380 < CURSOR_MAX_LENGTH


@given(st.text(max_size=300))
def test_any_other_text_is_malformed_or_a_cursor(text):
    try:
        read_cursor(text, ListFilters())
    except ValueError as exc:
        assert str(exc) == "cursor is malformed: pass the next_cursor of a previous page unchanged" or (
            str(exc).startswith("cursor was made for other filters")
        )


# --- the stored size ------------------------------------------------------------------------------


def stored_number_length(value: float) -> int:
    """numeric's text for what json.dumps wrote, as pg8000 reads it back and the API writes it."""
    text = json.dumps(value)
    exact = Decimal(text)
    return len(str(int(exact))) if "e+" in text else len(text)  # an e+ form has no fractional digits left


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exponent_growth_is_what_numeric_writes_out(value):
    assert len(json.dumps(value)) + _exponent_growth(value) == stored_number_length(value)


def test_exponent_growth_counts_every_number_in_the_tree():
    assert _exponent_growth({"a": [1e300, {"b": -1e16}], "c": "1e300", "d": 1e15}) == (301 - 6) + (18 - 6)


def test_stored_payload_size_limit():
    exactly = ["é" * (MAX_STORED_PAYLOAD_BYTES // 2 - 2)]  # 2 bytes each, and 4 for the brackets and quotes
    check_stored_payload_size(exactly)
    with pytest.raises(ValueError, match=r"^payload would be stored as 1048577 bytes of JSON, over the limit of "):
        check_stored_payload_size([exactly[0] + "x"])
    with pytest.raises(ValueError, match="1e300 takes 301 digits"):
        check_stored_payload_size([1e300] * 4000)
