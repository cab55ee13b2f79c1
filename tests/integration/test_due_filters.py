"""GET /api/v1/tasks?execute_after=…&execute_before=…: only tasks with
execute_after <= execute_at < execute_before, and `total` counts exactly those, whatever the range
(inside one day, across many, open on either side, on the edges of UTC days) and however the tasks
changed since they were created. Through the list_tasks handler, against the real PostgreSQL, and
checked against count(*) of the same rows."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from atcore import repository
from atcore.api import PAGE_BUDGET
from atcore.sql import query
from devtools.support.functions import invoke_raw, load_event

DAY0 = datetime(2099, 1, 1, tzinfo=UTC)


def list_raw(**query: str) -> dict:
    return invoke_raw(
        "list_tasks",
        load_event(
            "list_tasks",
            queryStringParameters=query or None,
            multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
        ),
    )


def list_page(**query: str) -> dict:
    response = list_raw(**query)
    assert response["statusCode"] == 200, response["body"][:300]
    return json.loads(response["body"])


def stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def insert_at(sql, times: list[datetime], statuses: list[str], types: list[str]) -> None:
    sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload, status, attempts, completed_at) "
        "SELECT t.at, t.task_type, '{}', t.status, CASE WHEN t.status = 'completed' THEN 1 ELSE 0 END, "
        "       CASE WHEN t.status = 'completed' THEN now() END "
        "FROM unnest(CAST(:times AS timestamptz[]), CAST(:task_types AS text[]), CAST(:statuses AS text[])) "
        "     AS t(at, task_type, status)",
        times=[stamp(t) for t in times],
        task_types=types,
        statuses=statuses,
    )


def expected(sql, lo: datetime | None, hi: datetime | None, status: str | None, task_type: str | None) -> list[int]:
    """The ids that match, newest first, by a plain scan of the table."""
    rows = sql.run(
        "SELECT id FROM scheduled_tasks WHERE (CAST(:lo AS timestamptz) IS NULL OR execute_at >= :lo) "
        "AND (CAST(:hi AS timestamptz) IS NULL OR execute_at < :hi) "
        "AND (CAST(:status AS text) IS NULL OR status = :status) "
        "AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type) ORDER BY id DESC",
        lo=lo and stamp(lo),
        hi=hi and stamp(hi),
        status=status,
        task_type=task_type,
    )
    return [row[0] for row in rows]


def query_of(lo, hi, status, task_type, **more: str) -> dict[str, str]:
    """The query string of a list request; absent (None, "0") values are left out."""
    given = {"execute_after": lo and stamp(lo), "execute_before": hi and stamp(hi), "status": status}
    return {k: v for k, v in (given | {"task_type": task_type} | more).items() if v}


@pytest.fixture(params=["day by day", "by id"])
def way(request, monkeypatch) -> str:
    """Both ways to a due-time page, for the tests that list ranges: these few tasks would always
    go by id (repository.SCAN_BY_ID_MAX)."""
    monkeypatch.setattr(repository, "SCAN_BY_ID_MAX", -1 if request.param == "day by day" else 10**9)
    return request.param


@pytest.fixture
def spread(sql) -> random.Random:
    """400 tasks over ten UTC days, some exactly on midnights, of two types and two statuses."""
    rng = random.Random(12)
    times = [DAY0 + timedelta(seconds=rng.randrange(10 * 86400), microseconds=rng.randrange(10**6)) for _ in range(380)]
    times += [DAY0 + timedelta(days=d) for d in range(10)] * 2  # on the edges of days
    insert_at(
        sql, times, [rng.choice(["pending", "completed"]) for _ in times], [rng.choice(["a", "b"]) for _ in times]
    )
    return rng


def test_totals_and_pages_match_the_rows_for_any_range(sql, spread, way):
    rng = spread
    ranges = [
        (None, None),
        (DAY0, DAY0 + timedelta(days=10)),  # whole days only
        (DAY0 + timedelta(days=2), DAY0 + timedelta(days=2)),  # empty
        (DAY0 + timedelta(days=3, hours=1), DAY0 + timedelta(days=3, hours=5)),  # inside one day
        (DAY0 + timedelta(days=3, hours=20), DAY0 + timedelta(days=4, hours=3)),  # across one midnight
        (DAY0 + timedelta(days=4), None),  # open after, on a midnight
        (None, DAY0 + timedelta(days=6)),  # open before, on a midnight
        (None, DAY0 + timedelta(days=6, microseconds=1)),
    ]
    for _ in range(25):
        lo = DAY0 + timedelta(seconds=rng.randrange(-86400, 11 * 86400))
        ranges.append((lo, lo + timedelta(seconds=rng.randrange(12 * 86400))))
        ranges.append((rng.choice([lo, None]), rng.choice([lo + timedelta(hours=rng.randrange(300)), None])))
    for lo, hi in ranges:
        for status, task_type in [(None, None), ("pending", None), (None, "b"), ("completed", "a")]:
            ids = expected(sql, lo, hi, status, task_type)
            offset = rng.choice([0, 0, 3, 20])
            page = list_page(**query_of(lo, hi, status, task_type, limit="7", offset=str(offset)))
            assert page["total"] == len(ids), (lo, hi, status, task_type)
            assert [task["id"] for task in page["tasks"]] == ids[offset : offset + 7], (lo, hi, status, task_type)


def test_deep_offsets_take_the_other_way_to_the_same_pages(sql, spread, monkeypatch):
    """Past BY_DUE_DAY_MAX_OFFSET a due-time page is one scan by id; both ways give the same pages."""
    lo, hi = DAY0 + timedelta(days=1, hours=3), DAY0 + timedelta(days=8, hours=20)
    monkeypatch.setattr(repository, "SCAN_BY_ID_MAX", -1)  # never by id for want of tasks
    pages = {}
    for most in (-1, 1000):  # -1: every page by one scan by id; 1000: every page day by day
        monkeypatch.setattr(repository, "BY_DUE_DAY_MAX_OFFSET", most)
        pages[most] = [list_page(**query_of(lo, hi, None, None, limit="9", offset=str(o))) for o in (0, 1, 30)]
    assert pages[-1] == pages[1000]
    ids = expected(sql, lo, hi, None, None)
    assert [[task["id"] for task in page["tasks"]] for page in pages[-1]] == [ids[0:9], ids[1:10], ids[30:39]]


def test_a_due_time_page_goes_by_id_when_status_and_type_match_few_tasks(sql, spread):
    """The day by day merge reads every task of each day; when the status and type match no more
    than SCAN_BY_ID_MAX tasks in all, reading those by id is the smaller read (the choice the
    query makes once, from the counts table)."""
    matching = len(expected(sql, None, None, "pending", "a"))  # about 100 of the 400

    def went_by_day(most: int, status: str | None, task_type: str | None, **due: str) -> bool:
        rows = sql.run(
            query("list_tasks"),
            **{"status": status, "task_type": task_type, "execute_after": None, "execute_before": None} | due,
            by_due_day=bool(due),
            scan_by_id_max=most,
            before_id=None,
            limit=5,
            offset=0,
            max_bytes=PAGE_BUDGET,
        )
        return rows[0][[column["name"] for column in sql.columns].index("went_by_day")]

    week = {"execute_after": stamp(DAY0 + timedelta(days=1)), "execute_before": stamp(DAY0 + timedelta(days=8))}
    assert went_by_day(matching - 1, "pending", "a", **week)
    assert not went_by_day(matching, "pending", "a", **week)
    assert went_by_day(399, None, None, **week) and not went_by_day(400, None, None, **week)  # all of them
    assert not went_by_day(-1, "pending", "a")  # without a due-time filter: always by id


def test_totals_stay_exact_as_tasks_move_change_and_go(sql, spread, way):
    sql.run("UPDATE scheduled_tasks SET execute_at = execute_at + interval '30 hours' WHERE id % 3 = 0")  # PATCH
    sql.run("UPDATE scheduled_tasks SET status = 'cancelled' WHERE id % 5 = 0 AND status = 'pending'")
    sql.run("DELETE FROM scheduled_tasks WHERE id % 7 = 0")  # retention
    for lo, hi in [
        (DAY0 + timedelta(days=1), DAY0 + timedelta(days=9)),
        (DAY0 + timedelta(days=1, hours=12), DAY0 + timedelta(days=8, hours=2)),
        (DAY0 + timedelta(days=9, hours=1), None),
    ]:
        for status in (None, "pending", "cancelled"):
            page = list_page(**query_of(lo, hi, status, None))
            assert page["total"] == len(expected(sql, lo, hi, status, None)), (lo, hi, status)


def test_a_cursor_walk_with_a_range_sees_every_matching_task_once(sql, spread, way):
    lo, hi = DAY0 + timedelta(days=2, hours=7), DAY0 + timedelta(days=7, hours=2)
    query = query_of(lo, hi, None, "a", limit="9")
    seen, page = [], list_page(**query)
    seen += [task["id"] for task in page["tasks"]]
    while "next_cursor" in page:
        page = list_page(**query, cursor=page["next_cursor"])
        assert page["total"] == len(expected(sql, lo, hi, None, "a"))
        seen += [task["id"] for task in page["tasks"]]
    assert seen == expected(sql, lo, hi, None, "a") and len(seen) > 30


def test_a_cursor_belongs_to_its_range(sql, spread):
    lo = DAY0 + timedelta(days=1)
    first = list_page(execute_after=stamp(lo), limit="2")
    response = list_raw(execute_after=stamp(lo + timedelta(seconds=1)), limit="2", cursor=first["next_cursor"])
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"].startswith("cursor was made for other filters (execute_after):")
    assert list_raw(limit="2", cursor=first["next_cursor"])["statusCode"] == 400  # nor without it
    # The same instant written with another offset is the same filter.
    same = stamp(lo).replace("2099-01-02T00:00:00Z", "2099-01-02T01:00:00+01:00")
    assert list_page(execute_after=same, limit="2", cursor=first["next_cursor"])["total"] == first["total"]


@pytest.mark.parametrize(
    "query, message",
    [
        ({"execute_after": "tomorrow"}, "execute_after must be RFC 3339 with a timezone"),
        ({"execute_after": "2099-01-01T00:00:00"}, "execute_after must be RFC 3339 with a timezone"),
        ({"execute_before": "2099-13-01T00:00:00Z"}, "execute_before must be RFC 3339 with a timezone"),
        ({"execute_before": "0000-01-01T00:00:00Z"}, "execute_before must be RFC 3339 with a timezone"),
        (
            {"execute_after": "2099-01-02T00:00:00Z", "execute_before": "2099-01-01T00:00:00Z"},
            "execute_after must not be later than execute_before",
        ),
    ],
)
def test_a_bad_time_filter_is_a_400(sql, query, message):
    response = list_raw(**query)
    assert response["statusCode"] == 400
    assert message in json.loads(response["body"])["error"]


def test_far_times_and_equal_bounds_are_simply_ranges(sql, spread, way):
    assert list_page(execute_after="0001-01-01T00:00:00Z", execute_before="9999-12-31T23:59:59Z")["total"] == 400
    assert list_page(execute_after="2099-01-03T00:00:00Z", execute_before="2099-01-03T00:00:00Z") == {
        "tasks": [],
        "total": 0,
    }
    assert list_page(execute_after="", execute_before="")["total"] == 400  # empty means not given
