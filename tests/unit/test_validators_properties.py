"""Properties of the request validators (atcore.models, atcore.api.parse_json_body), with Hypothesis.

Each property holds for every input Hypothesis finds: a value is accepted with the meaning the
contract gives it, or refused with the validator's own message, and nothing else ever escapes
(no OverflowError, RecursionError, or Python's own wording in a 400). No database: requests that
would reach one are never generated.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from atcore.api import parse_json_body
from atcore.models import (
    DEFAULT_PAGE_SIZE,
    INT64_MAX,
    MAX_PAGE_SIZE,
    MAX_PAYLOAD_DEPTH,
    TASK_TYPE_MAX_LENGTH,
    CreateTaskRequest,
    check_task_type,
    format_timestamp,
    parse_execute_at,
    parse_limit,
    parse_offset,
    parse_task_id,
    parse_task_type_filter,
)
from devtools.support.functions import invoke, load_event

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Powertools metrics without metrics
bounded = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ID_MESSAGE = f"id must be an integer from 1 to {INT64_MAX}"
RFC3339_MESSAGE = "execute_at must be RFC 3339 with a timezone"

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59)
fractions = st.text(string.digits, max_size=30)
moments = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31))
# Characters a task_type may hold: anything but C0/C1 controls and surrogates (check_task_type).
type_characters = st.characters(exclude_categories=("Cc", "Cs"))
astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs", "Cn", "Co"))


def rfc3339(moment: datetime, fraction: str, offset_minutes: int, *, zulu: bool = False) -> str:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    offset = "Z" if zulu else f"{sign}{hours:02d}:{minutes:02d}"
    return f"{moment.replace(microsecond=0).isoformat()}{'.' + fraction if fraction else ''}{offset}"


def expected_instant(moment: datetime, fraction: str, offset_minutes: int) -> datetime:
    microseconds = int((fraction + "000000")[:6])  # digits beyond microseconds are truncated
    local = moment.replace(microsecond=microseconds, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    return local.astimezone(UTC)


# --- execute_at ---------------------------------------------------------------------------------


@bounded
@given(moments, fractions, offsets, st.booleans())
@example(datetime(2099, 12, 31, 23, 59, 59), "9" * 30, 23 * 60 + 59, False)
@example(datetime(2099, 1, 1), "", -(23 * 60 + 59), False)
def test_any_offset_and_fraction_length_parse_to_the_instant(moment, fraction, offset_minutes, lower_case):
    text = rfc3339(moment, fraction, offset_minutes)
    if lower_case:
        text = text.replace("T", "t")
    assert parse_execute_at(text) == expected_instant(moment, fraction, offset_minutes)


@bounded
@given(moments, fractions, offsets)
def test_format_timestamp_re_parses_to_the_same_instant(moment, fraction, offset_minutes):
    parsed = parse_execute_at(rfc3339(moment, fraction, offset_minutes))
    formatted = format_timestamp(parsed)
    assert formatted.endswith("Z") and parse_execute_at(formatted) == parsed
    assert "." not in formatted or not formatted.endswith("0Z")  # sub-second digits only when non-zero


@bounded
@given(moments, fractions, offsets, st.sampled_from(["second", "minute", "hour", "offset"]))
@example(datetime(2016, 12, 31, 23, 59), "", 0, "second")  # a real leap second: 23:59:60Z
def test_leap_seconds_and_out_of_range_fields_are_a_clean_value_error(moment, fraction, offset_minutes, field):
    text = rfc3339(moment, fraction, offset_minutes)
    date, time = text.split("T")
    hh, mm, rest = time.split(":", 2)
    if field == "second":
        text = f"{date}T{hh}:{mm}:60{rest[2:]}"
    elif field == "minute":
        text = f"{date}T{hh}:60:{rest}"
    elif field == "hour":
        text = f"{date}T24:{mm}:{rest}"
    else:
        text = (
            text[:-6] + ("+24:00" if offset_minutes >= 0 else "-24:00")
            if not text.endswith("Z")
            else text[:-1] + "+24:00"
        )
    with pytest.raises(ValueError, match=RFC3339_MESSAGE):
        parse_execute_at(text)
    with pytest.raises(ValidationError, match=RFC3339_MESSAGE):
        CreateTaskRequest.model_validate({"execute_at": text, "task_type": "t", "payload": 1})


@settings(max_examples=25, deadline=None)
@given(st.datetimes(min_value=datetime(2030, 1, 1), max_value=datetime(9998, 12, 31)), offsets)
def test_a_leap_second_is_a_400_through_the_handler(moment, offset_minutes):
    text = rfc3339(moment.replace(second=0), "", offset_minutes).replace(":00+", ":60+").replace(":00-", ":60-")
    body = json.dumps({"execute_at": text, "task_type": "t", "payload": 1})
    status, answer = invoke("create_task", load_event("create_task", body=body))
    assert status == 400 and answer["error"].startswith(RFC3339_MESSAGE), (text, answer)


@bounded
@given(st.text(max_size=40))
def test_any_other_text_is_accepted_only_as_rfc3339(text):
    try:
        parsed = parse_execute_at(text)
    except ValueError as error:
        assert str(error).startswith(RFC3339_MESSAGE)
    else:
        assert parsed.tzinfo is UTC


# --- task_type ----------------------------------------------------------------------------------


@bounded
@given(st.text(type_characters, min_size=TASK_TYPE_MAX_LENGTH, max_size=TASK_TYPE_MAX_LENGTH))
def test_task_type_of_50_characters_is_accepted(task_type):
    assert check_task_type(task_type) == task_type


@bounded
@given(st.text(astral, min_size=TASK_TYPE_MAX_LENGTH, max_size=TASK_TYPE_MAX_LENGTH))
def test_astral_characters_count_as_one_even_through_json_escapes(task_type):
    body = json.dumps(
        {"execute_at": "2099-01-01T00:00:00Z", "task_type": task_type, "payload": 1}
    )  # \ud83d\ude00 pairs
    assert len(body.encode()) > 4 * TASK_TYPE_MAX_LENGTH
    assert CreateTaskRequest.model_validate(parse_json_body(body)).task_type == task_type


@bounded
@given(
    st.text(type_characters, min_size=TASK_TYPE_MAX_LENGTH + 1, max_size=TASK_TYPE_MAX_LENGTH + 1)
    | st.text(astral, min_size=51, max_size=51)
)
def test_task_type_of_51_characters_is_rejected(task_type):
    with pytest.raises(ValueError, match="task_type must be 1 to 50 characters long"):
        check_task_type(task_type)
    with pytest.raises(ValidationError, match="task_type must be 1 to 50 characters long"):
        CreateTaskRequest.model_validate({"execute_at": "2099-01-01T00:00:00Z", "task_type": task_type, "payload": 1})


@bounded
@given(
    st.text(type_characters, max_size=20), st.characters(categories=("Cc", "Cs")), st.text(type_characters, max_size=20)
)
def test_task_type_with_a_control_character_is_rejected(before, control, after):
    assume(len(before) + len(after) < TASK_TYPE_MAX_LENGTH)
    with pytest.raises(ValueError, match="control characters"):
        check_task_type(before + control + after)


@bounded
@given(st.text(max_size=60))
def test_task_type_filter_takes_exactly_what_a_task_type_may_be(text):
    try:
        value = parse_task_type_filter(text)
    except ValueError as error:
        assert len(text) > TASK_TYPE_MAX_LENGTH or "control characters" in str(error)
    else:
        assert value == (text or None)
        if text:
            assert check_task_type(text) == text


# --- bodies: deep, large, odd JSON --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=40,
)


def nested(depth: int, kind: str) -> str:
    return ('{"k":' * depth + "1" + "}" * depth) if kind == "object" else ("[" * depth + "1" + "]" * depth)


def create_from(text: str) -> CreateTaskRequest | None:
    """The property: a body is parsed and validated, or refused with one of the two expected errors."""
    try:
        return CreateTaskRequest.model_validate(parse_json_body(text))
    except (ValidationError, json.JSONDecodeError):
        return None


@bounded
@given(st.integers(0, 3000), st.sampled_from(["array", "object"]), st.sampled_from(["payload", "body", "other"]))
@example(MAX_PAYLOAD_DEPTH, "array", "payload")
@example(MAX_PAYLOAD_DEPTH + 1, "object", "payload")
@example(100_000, "array", "body")
def test_deep_json_is_refused_cleanly(depth, kind, where):
    value = nested(depth, kind)
    if where == "payload":
        text = f'{{"execute_at":"2099-01-01T00:00:00Z","task_type":"t","payload":{value}}}'
    elif where == "other":  # an unknown field: ignored, however deep
        text = f'{{"execute_at":"2099-01-01T00:00:00Z","task_type":"t","payload":1,"x":{value}}}'
    else:
        text = value
    request = create_from(text)
    if where == "payload":
        assert (request is not None) == (depth <= MAX_PAYLOAD_DEPTH)
    if request is not None:
        request.model_dump_json()  # and what is accepted can be answered


@bounded
@given(json_values, st.sampled_from(["payload", "body", "task_type", "execute_at", "max_attempts"]))
def test_any_json_value_anywhere_is_validated_or_refused(value, where):
    body = {"execute_at": "2099-01-01T00:00:00Z", "task_type": "t", "payload": {"a": 1}}
    text = json.dumps(value if where == "body" else body | {where: value})
    request = create_from(text)
    if where == "payload" and request is not None:
        assert request.payload == value


@bounded
@given(
    st.sampled_from(
        [
            "1e400",
            "-1e400",
            "NaN",
            "Infinity",
            "-Infinity",
            "9" * 5000,
            "1" + "0" * 4300,
            "0.5e-400",
            "1.7976931348623157e308",
        ]
    )
)
def test_numbers_jsonb_or_python_cannot_hold_are_refused(number):
    request = create_from(f'{{"execute_at":"2099-01-01T00:00:00Z","task_type":"t","payload":[{number}]}}')
    if request is not None:  # accepted means storable: finite, and printable by json.dumps
        json.dumps(request.payload, allow_nan=False)


@settings(max_examples=10, deadline=None)
@given(st.integers(200_000, 400_000), st.sampled_from(["string", "array"]))
def test_large_payloads_are_validated_or_refused(size, kind):
    payload = json.dumps("x" * size) if kind == "string" else json.dumps(list(range(size // 7)))
    text = f'{{"execute_at":"2099-01-01T00:00:00Z","task_type":"t","payload":{payload}}}'
    assert create_from(text) is not None  # the size limit is the gateway's (413), not the model's


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_bodies_are_a_400_through_the_handler(raw):
    text = raw.decode("utf-8", "replace")
    status, answer = invoke("create_task", load_event("create_task", body=text))
    assert status == 400 and answer["error"], (raw, answer)


# --- ids, limit, offset -------------------------------------------------------------------------


def as_int(text: str) -> int:
    return int(text.lstrip("0") or "0")  # the expected value, without int()'s 4,300-digit limit


huge_numbers = (
    st.integers(-(10**40), 10**40).map(str)
    | st.text(string.digits, min_size=1, max_size=6000)
    | st.builds(lambda n, zeros: "0" * zeros + str(n), st.integers(0, 2**70), st.integers(0, 5000))
    | st.text(max_size=30)
)


@bounded
@given(huge_numbers)
@example("9" * 5000)
@example("0" * 5000 + "1")
@example(str(INT64_MAX + 1))
def test_parse_task_id_is_in_range_or_its_own_value_error(text):
    try:
        task_id = parse_task_id(text)
    except ValueError as error:
        assert str(error) == ID_MESSAGE
    else:
        assert 1 <= task_id <= INT64_MAX and task_id == as_int(text)


@bounded
@given(huge_numbers)
@example("9" * 5000)
def test_parse_limit_and_offset_are_in_range_or_their_own_value_error(text):
    for parse, name in ((parse_limit, "limit"), (parse_offset, "offset")):
        try:
            value = parse(text)
        except ValueError as error:
            assert str(error) == f"{name} must be a non-negative integer"
        else:
            assert 0 <= value <= INT64_MAX
            if name == "limit":
                assert 1 <= value <= MAX_PAGE_SIZE
                assert value == (min(as_int(text), MAX_PAGE_SIZE) if text and as_int(text) else DEFAULT_PAGE_SIZE)
            else:
                assert value == (as_int(text) if text else 0)


def _is_valid_id(text: str) -> bool:
    try:
        parse_task_id(text)
    except ValueError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    huge_numbers.filter(lambda t: "/" not in t)
    | st.text(st.characters(exclude_characters="/"), min_size=1, max_size=20)
)
@example("°")
@example("🙂")
@example("9" * 5000)
def test_a_bad_path_id_is_a_400_with_the_id_message(text):
    assume(text and not _is_valid_id(text))  # a valid id would need the database
    for function in ("get_task", "cancel_task"):
        event = load_event(function, path=f"/api/v1/tasks/{text}", pathParameters={"id": text})
        status, answer = invoke(function, event)
        assert (status, answer["error"]) == (400, ID_MESSAGE), (function, text)
