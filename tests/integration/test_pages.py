"""GET /api/v1/tasks pages that always fit in one Lambda response, cursor paging, and single-task
answers that always fit: through the real handlers, against the real PostgreSQL.

"Fits" is measured as Lambda's python3.13 runtime marshals what a handler returns: the whole proxy
dict, json.dumps(..., ensure_ascii=False) in UTF-8, with U+2028/U+2029 escaped as simplejson (the
runtime interface client's encoder) does. The limit is 6,291,456 bytes."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from atcore.api import MAX_TASK_BYTES, PAGE_BUDGET, RESPONSE_MARGIN, dumps_json, envelope_bytes
from atcore.models import MAX_BODY_BYTES, MAX_STORED_PAYLOAD_BYTES
from atcore.sql import query
from devtools.support.functions import invoke_raw, load_event

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
    event = load_event(
        "list_tasks",
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
    )
    return invoke_raw("list_tasks", event)


def list_page(**query: str) -> tuple[dict, int]:
    """(the page, the runtime size of the response carrying it); asserts a 200 that fits."""
    response = list_raw(**query)
    assert response["statusCode"] == 200, response["body"][:300]
    size = runtime_bytes(response)
    assert size < LAMBDA_RESPONSE_LIMIT
    return json.loads(response["body"]), size


def list_error(**query: str) -> tuple[int, dict]:
    response = list_raw(**query)
    return response["statusCode"], json.loads(response["body"])


def id_event(name: str, task_id: int) -> dict:
    return load_event(name) | {"path": f"/api/v1/tasks/{task_id}", "pathParameters": {"id": str(task_id)}}


def ids(page: dict) -> list[int]:
    return [task["id"] for task in page["tasks"]]


def walk(**query: str) -> list[dict]:
    """Every page from the first on, following next_cursor; each page must fit."""
    pages = []
    page, _ = list_page(**query)
    pages.append(page)
    while "next_cursor" in page:
        page, _ = list_page(**query, cursor=page["next_cursor"])
        pages.append(page)
    return pages


def insert_tasks(sql, count: int, task_type: str = "t", status: str = "pending") -> list[int]:
    extra = ", completed_at" if status in ("completed", "failed") else ""
    values = ", now()" if extra else ""
    rows = sql.run(
        f"INSERT INTO scheduled_tasks (execute_at, task_type, payload, status, attempts{extra}) "
        f"SELECT now() + interval '1 day', :task_type, jsonb_build_object('n', g), :status, "
        f"{'1' if extra else '0'}{values} FROM generate_series(1, :count) AS g RETURNING id",
        task_type=task_type,
        status=status,
        count=count,
    )
    return [row[0] for row in rows]


def e_body() -> str:
    """A create body of 256 KiB whose payload is one string of "é" (2 bytes each in UTF-8)."""
    envelope = body_of('""')
    return body_of('"' + "é" * ((MAX_BODY_BYTES - len(envelope.encode())) // 2) + '"')


# --- pages that fit -----------------------------------------------------------------------------


def test_seven_tasks_of_256_kib_of_e_are_one_page_that_fits(sql):
    # The attack: with \u00e9 escapes (its backslash escaped again in the envelope) each was ~917 KB,
    # so the seven made 6.4 MB and API Gateway answered 502 for the page, for everyone.
    body = e_body()
    assert len(body.encode()) <= MAX_BODY_BYTES
    created = [create(body) for _ in range(7)]
    page, size = list_page()
    assert ids(page) == [task["id"] for task in reversed(created)] and page["total"] == 7
    assert "next_cursor" not in page
    assert size < 7 * 300_000  # UTF-8: about 262 KB a task


def test_a_page_that_would_not_fit_holds_fewer_tasks_and_next_cursor_goes_on(sql):
    # 30 tasks of 256 KiB of "é" are 7.9 MB in UTF-8: more than one response carries.
    body = e_body()
    created = sorted((create(body)["id"] for _ in range(30)), reverse=True)
    pages = walk(limit="100")
    assert len(pages) == 2
    first, second = pages
    assert 0 < len(first["tasks"]) < 30 and first["total"] == second["total"] == 30
    assert [i for page in pages for i in ids(page)] == created  # none repeated, none skipped, in order
    assert "next_cursor" not in second
    # The page is cut by the budget, not far below it: one more task would not have fitted.
    _, size = list_page(limit="100")
    assert size <= PAGE_BUDGET + 1024 and size + 270_000 > PAGE_BUDGET
    # A client of the original API advances offset by the number of tasks received.
    by_offset, offset = [], 0
    while offset < 30:
        page, _ = list_page(limit="100", offset=str(offset))
        assert page["tasks"], offset
        by_offset += ids(page)
        offset += len(page["tasks"])
    assert by_offset == created


def test_what_a_page_adds_around_its_tasks_is_a_small_part_of_the_margin(sql):
    # The proxy dict's other members, {"tasks":[...],"total":N} and a next_cursor carrying a
    # 50-character task_type of 4-byte characters (380 characters at most) are what
    # RESPONSE_MARGIN must hold besides room for later headers.
    task_type = "😀" * 50
    insert_tasks(sql, 2, task_type=task_type)
    response = list_raw(limit="1", task_type=task_type, status="pending")
    page = json.loads(response["body"])
    assert len(page["tasks"]) == 1 and len(page["next_cursor"]) > 350
    overhead = runtime_bytes(response) - envelope_bytes(dumps_json(page["tasks"][0]))
    assert 0 < overhead < 1024 and overhead * 50 < RESPONSE_MARGIN


def test_seven_of_the_largest_tasks_need_more_than_one_page(sql):
    # A 256 KiB body of 1e15s is stored as about 1 MB of digits (1000000000000000.0), the largest
    # task a create accepts: seven of them do not fit in one response.
    count = (MAX_BODY_BYTES - len(body_of("[]"))) // 5
    body = body_of("[" + ",".join(["1e15"] * count) + "]")
    created = sorted((create(body)["id"] for _ in range(7)), reverse=True)
    pages = walk()
    assert len(pages[0]["tasks"]) < 7 and len(pages) > 1
    assert [i for page in pages for i in ids(page)] == created
    assert all(page["total"] == 7 for page in pages)


def test_a_page_of_large_tasks_reads_little_more_than_it_shows(sql):
    # 101 tasks of about 1 MB each: reading them all for a page of 6 took 200 MB more memory than
    # a 256 MB function has. The query reads rows whole only until the page has enough.
    create(terse_body("1e15"))
    sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT execute_at, task_type, payload FROM scheduled_tasks, generate_series(1, 100)"
    )
    first, _ = list_page(limit="100")
    assert 1 < len(first["tasks"]) < 10 and first["total"] == 101
    rows = sql.run(
        query("list_tasks"),
        status=None,
        task_type=None,
        execute_after=None,
        execute_before=None,
        by_due_day=False,
        scan_by_id_max=0,
        before_id=None,
        limit=101,
        offset=0,
        max_bytes=PAGE_BUDGET,
    )
    read_whole = [row[1] for row in rows if row[4] is not None]
    assert len(rows) == 101 and ids(first) == read_whole[: len(first["tasks"])]
    assert len(read_whole) <= len(first["tasks"]) + 1
    second, _ = list_page(limit="100", cursor=first["next_cursor"])
    assert ids(second)[0] == ids(first)[-1] - 1 and len(second["tasks"]) == len(first["tasks"])


def test_next_cursor_only_while_more_tasks_match(sql):
    insert_tasks(sql, 6)
    page, _ = list_page(limit="3")
    assert ids(page) == [6, 5, 4] and "next_cursor" in page
    page, _ = list_page(limit="3", cursor=page["next_cursor"])
    assert ids(page) == [3, 2, 1] and "next_cursor" not in page  # exactly the last ones: no cursor
    page, _ = list_page(limit="6")
    assert ids(page) == [6, 5, 4, 3, 2, 1] and "next_cursor" not in page
    page, _ = list_page(limit="2", offset="2")
    assert ids(page) == [4, 3] and "next_cursor" in page  # an offset page gets one too
    page, _ = list_page(limit="2", cursor=page["next_cursor"])
    assert ids(page) == [2, 1] and "next_cursor" not in page
    assert list_page(offset="6")[0] == {"tasks": [], "total": 6}
    assert list_page(status="failed")[0] == {"tasks": [], "total": 0}


def test_a_cursor_walk_never_repeats_or_skips_while_tasks_are_created(sql, database_server, database):
    existing = insert_tasks(sql, 250, task_type="a") + insert_tasks(sql, 50, task_type="b")
    stop, created_meanwhile = threading.Event(), []

    def keep_creating():  # another client, on its own connection (handlers are not run from threads)
        conn = database_server.connect(database)
        try:
            while not stop.is_set():
                created_meanwhile.extend(insert_tasks(conn, 3, task_type="a"))
        finally:
            conn.close()

    writer = threading.Thread(target=keep_creating)
    writer.start()
    try:
        seen, typed, page = [], [], None
        while page is None or "next_cursor" in page:
            created_meanwhile.append(create(body_of('{"late": true}', task_type="a"))["id"])  # one per page at least
            page, _ = list_page(limit="7", **({"cursor": page["next_cursor"]} if page else {}))
            seen += ids(page)
        page = None
        while page is None or "next_cursor" in page:
            page, _ = list_page(limit="9", task_type="a", **({"cursor": page["next_cursor"]} if page else {}))
            typed += ids(page)
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)) and len(typed) == len(set(typed))  # never repeated
    assert set(existing) <= set(seen) and set(existing[:250]) <= set(typed)  # never skipped one that existed
    assert seen == sorted(seen, reverse=True) and typed == sorted(typed, reverse=True)  # newest first throughout
    assert set(seen) - set(existing) <= set(created_meanwhile) and not set(typed) & set(existing[250:])
    assert len(created_meanwhile) > 45  # the walks really ran while tasks were being created


def test_cursor_pages_keep_the_total_and_the_filters(sql):
    insert_tasks(sql, 5, task_type="a")
    insert_tasks(sql, 4, task_type="b", status="completed")
    insert_tasks(sql, 3, task_type="a", status="completed")
    pages = walk(status="completed", task_type="a", limit="2")
    assert [ids(page) for page in pages] == [[12, 11], [10]]
    assert {page["total"] for page in pages} == {3}
    pages = walk(status="completed", limit="3")
    assert [ids(page) for page in pages] == [[12, 11, 10], [9, 8, 7], [6]]
    assert {page["total"] for page in pages} == {7}
    first, _ = list_page(limit="4")
    second, _ = list_page(limit="100", cursor=first["next_cursor"])  # the limit may change between pages
    assert ids(second) == list(range(8, 0, -1)) and second["total"] == 12
    assert list_page(cursor="", limit="2")[0]["tasks"] == first["tasks"][:2]  # an empty cursor is no cursor


# --- cursors that are refused ---------------------------------------------------------------------


def test_cursor_with_an_offset_is_a_400(sql):
    insert_tasks(sql, 3)
    first, _ = list_page(limit="1")
    status, body = list_error(limit="1", offset="1", cursor=first["next_cursor"])
    assert status == 400 and "cursor and offset cannot be combined" in body["error"]
    assert list_page(limit="1", offset="0", cursor=first["next_cursor"])[0]["tasks"][0]["id"] == 2  # offset 0 is none


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        "x" * 2000,
        "eyJ2IjoxfQ",
        "e30",
        b64(b"\xff\xfe"),
        b64(b"[1]"),
        b64(b'{"v":1,"before":0,"filters":{}}'),
        b64(b'{"v":1,"before":"5","filters":{}}'),
        b64(b'{"v":1,"before":5.0,"filters":{}}'),
        b64(b'{"v":true,"before":5,"filters":{}}'),
        b64(b'{"v":2,"before":5,"filters":{}}'),
        b64(b'{"v":1,"before":9223372036854775808,"filters":{}}'),
        b64(b'{"v":1,"before":5,"filters":{"status":"done"}}'),
        b64(b'{"v":1,"before":5,"filters":{"x":1}}'),
        b64(b'{"v":1,"before":5,"filters":{},"more":1}'),
        "eyJ2IjoxLCJiZWZvcmUiOjUsImZpbHRlcnMiOnt9fQ===",
    ],
)
def test_a_malformed_cursor_is_a_400(sql, cursor):
    insert_tasks(sql, 2)
    status, body = list_error(cursor=cursor)
    assert status == 400, body
    assert body["error"] == "cursor is malformed: pass the next_cursor of a previous page unchanged"


@pytest.mark.parametrize(
    "made_with, used_with, differing",
    [
        ({}, {"status": "pending"}, "status"),
        ({"status": "pending"}, {}, "status"),
        ({"task_type": "a"}, {"task_type": "b"}, "task_type"),
        ({"status": "pending", "task_type": "a"}, {"status": "completed"}, "status, task_type"),
    ],
)
def test_a_cursor_made_for_other_filters_is_a_400(sql, made_with, used_with, differing):
    insert_tasks(sql, 3, task_type="a")
    first, _ = list_page(limit="1", **made_with)
    status, body = list_error(limit="1", cursor=first["next_cursor"], **used_with)
    assert status == 400
    assert body["error"].startswith(f"cursor was made for other filters ({differing}):")


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
WORST_ITEMS = [
    "1e15",
    "-1e15",
    "1e16",
    "1e300",
    "1e308",
    "-1.7976931348623157e308",
    '"\\""',
    '"\\\\"',
    '"\u2028"',
    '"\\u0001"',
    '"\\n"',
    '"é"',
    '"🙂"',
    "[]",
    "{}",
    "0",
    "true",
    '""',
]


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


def test_the_worst_task_of_all_fits_and_is_the_first_of_its_page(sql):
    # Every field at its worst at once: task_type of 50 quotes, the 1e15 payload, and an
    # error_message of 1,000 characters (the engine's cut) that are escaped twice over.
    body = terse_body("1e15", task_type='"' * 50)
    task = create(body)
    sql.run(
        "UPDATE scheduled_tasks SET status = 'failed', attempts = 3, completed_at = now(), error_message = :m",
        m="\u2028\x01" * 500,
    )
    fits_everywhere(sql, task, cancel=False)
    big = create(body)  # a page of many such tasks is cut, and the first always fits
    for _ in range(8):
        create(body)
    pages = walk(limit="100")
    assert len(pages) > 1 and ids(pages[0])[0] == big["id"] + 8
    assert [i for page in pages for i in ids(page)] == list(range(big["id"] + 8, task["id"] - 1, -1))


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
