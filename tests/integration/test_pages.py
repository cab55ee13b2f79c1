"""What the API functions answer, as Lambda carries it: through the real handlers, against the
real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from atcore.api import MAX_TASK_BYTES
from atcore.models import MAX_BODY_BYTES, MAX_STORED_PAYLOAD_BYTES
from conftest import invoke_raw, load_event

LAMBDA_RESPONSE_LIMIT = 6_291_456
FUTURE = "2099-01-01T12:00:00Z"


def runtime_bytes(response: dict) -> int:
    """The size of the invocation response as the python3.13 runtime sends it."""
    text = json.dumps(response, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return len(text.encode("utf-8"))


def body_of(payload_json: str, task_type: str = "t") -> str:
    """A create body around a payload written as JSON text (so it can be the tersest form)."""
    return '{"execute_at":"' + FUTURE + '","task_type":' + json.dumps(task_type) + ',"payload":' + payload_json + "}"


def create_raw(body: str) -> dict:
    return invoke_raw("create_task", load_event("create_task", body=body))


def create(body: str) -> dict:
    response = create_raw(body)
    assert response["statusCode"] == 201, response["body"][:300]
    return json.loads(response["body"])["task"]


def list_raw(**query: str) -> dict:
    event = load_event("list_tasks", queryStringParameters=query or None,
                       multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None)
    return invoke_raw("list_tasks", event)


def list_page(**query: str) -> tuple[dict, int]:
    """(the page, the runtime size of the response carrying it); asserts a 200 that fits."""
    response = list_raw(**query)
    assert response["statusCode"] == 200, response["body"][:300]
    size = runtime_bytes(response)
    assert size < LAMBDA_RESPONSE_LIMIT
    return json.loads(response["body"]), size


def id_event(name: str, task_id: int) -> dict:
    return load_event(name) | {"path": f"/api/v1/tasks/{task_id}", "pathParameters": {"id": str(task_id)}}


def ids(page: dict) -> list[int]:
    return [task["id"] for task in page["tasks"]]


# --- single tasks that fit ------------------------------------------------------------------------


def fits_everywhere(sql, task: dict, *, cancel: bool = True) -> None:
    """The task's GET, its list page (alone and first), and its DELETE all fit, within MAX_TASK_BYTES."""
    get = invoke_raw("get_task", id_event("get_task", task["id"]))
    assert get["statusCode"] == 200 and runtime_bytes(get) <= MAX_TASK_BYTES
    page, size = list_page(limit="1")
    assert ids(page) == [task["id"]] and size <= MAX_TASK_BYTES + 2048
    if cancel:
        deleted = invoke_raw("cancel_task", id_event("cancel_task", task["id"]))
        assert deleted["statusCode"] == 200 and runtime_bytes(deleted) <= MAX_TASK_BYTES


def terse_body(item: str, task_type: str = "t") -> str:
    """The 256 KiB create body with the most copies of `item` in its payload array."""
    room = MAX_BODY_BYTES - len(body_of("[]", task_type).encode())
    count = (room + 1) // len((item + ",").encode())
    body = body_of("[" + ",".join([item] * count) + "]", task_type)
    assert MAX_BODY_BYTES - len(item.encode()) <= len(body.encode()) <= MAX_BODY_BYTES
    return body


# The most copies of one item a 256 KiB body holds, for each item that grows on the way out: 1e15
# (4 bytes in, 1000000000000000.0 out), 1e300 and 1e308 (jsonb writes them as 301 and 309 digits),
# and what the envelope escapes again (quotes, backslashes, U+2028, control characters).
WORST_ITEMS = ["1e15", "-1e15", "1e16", "1e300", "1e308", "-1.7976931348623157e308", '"\\""', '"\\\\"',
               '"\u2028"', '"\\u0001"', '"\\n"', '"é"', '"🙂"', "[]", "{}", "0", "true", '""']


def test_every_worst_256_kib_body_is_answered_in_one_response_or_refused(sql):
    for item in WORST_ITEMS:
        before = sql.run("SELECT count(*) FROM scheduled_tasks")[0][0]
        response = create_raw(terse_body(item))
        assert runtime_bytes(response) <= MAX_TASK_BYTES, item
        if response["statusCode"] == 413:  # stored, it would exceed MAX_STORED_PAYLOAD_BYTES
            assert sql.run("SELECT count(*) FROM scheduled_tasks")[0][0] == before, item
            assert item in ("1e300", "1e308", "-1.7976931348623157e308"), item
            continue
        assert response["statusCode"] == 201, (item, response["body"][:200])
        fits_everywhere(sql, json.loads(response["body"])["task"])


def test_the_worst_task_of_all_fits(sql):
    # Every field at its worst at once: task_type of 50 quotes, the 1e15 payload, and an
    # error_message of 1,000 characters (the engine's cut) that are escaped twice over.
    body = terse_body("1e15", task_type='"' * 50)
    task = create(body)
    sql.run("UPDATE scheduled_tasks SET status = 'failed', attempts = 3, completed_at = now(), error_message = :m",
            m="\u2028\x01" * 500)
    fits_everywhere(sql, task, cancel=False)


def test_a_payload_stored_beyond_1_mib_is_a_413_and_nothing_is_stored(sql):
    # Without the rule a 256 KiB body of 1e308s was stored as 13 MB of digits: its 201, GET, DELETE
    # and every page holding it were larger than any Lambda response (502), and the task ran anyway.
    response = create_raw(terse_body("1e308"))
    body = json.loads(response["body"])
    assert response["statusCode"] == 413, body
    assert body["error"].startswith("payload would be stored as ") and "over the limit of 1048576" in body["error"]
    assert sql.run("SELECT count(*) FROM scheduled_tasks") == [[0]]


def test_the_stored_size_is_computed_exactly(sql):
    # [1e300] * n is stored as 302n + 1 bytes (each 1e300 as 301 digits): the largest n that fits
    # is accepted, one more is refused; what GET answers is exactly that size.
    n = (MAX_STORED_PAYLOAD_BYTES - 1) // 302
    task = create(body_of("[" + ",".join(["1e300"] * n) + "]"))
    get = invoke_raw("get_task", id_event("get_task", task["id"]))
    payload = json.loads(get["body"])["task"]["payload"]
    assert payload[0] == 10**300 and len(json.dumps(payload, separators=(",", ":"))) == 302 * n + 1
    assert create_raw(body_of("[" + ",".join(["1e300"] * (n + 1)) + "]"))["statusCode"] == 413
    negative = create(body_of("[-1.5e+20, 1e16, -0.0, 1.5e-7, 12345678901234567890]"))["payload"]
    assert json.dumps(negative) == "[-150000000000000000000, 10000000000000000, 0.0, 1.5e-07, 12345678901234567890]"


# --- UTF-8, not \uXXXX ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["é", "привет", "🙂", "\u2028", "日本語"])
def test_non_ascii_is_answered_as_utf8_and_parses_to_the_same_payload(sql, text):
    payload = {"text": text * 3, text: [text]}
    created = create_raw(body_of(json.dumps(payload), task_type=text))
    task_id = json.loads(created["body"])["task"]["id"]
    responses = [created, invoke_raw("get_task", id_event("get_task", task_id)), list_raw(task_type=text)]
    responses.append(invoke_raw("cancel_task", id_event("cancel_task", task_id)))
    for response in responses:
        assert response["statusCode"] in (200, 201)
        assert text in response["body"] and "\\u" not in response["body"]
        answer = json.loads(response["body"])
        task = answer["task"] if "task" in answer else answer["tasks"][0]
        assert task["payload"] == payload and task["task_type"] == text
