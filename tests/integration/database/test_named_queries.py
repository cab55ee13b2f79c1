"""The named queries in atcore/sql/*.sql as pg8000 sees them: each defined once, with exactly the
parameters every caller passes, and behaving as named."""

from __future__ import annotations

import ast
import json
import re

import pg8000.exceptions
import pg8000.native
import pytest

import migrate
from atcore import db
from atcore.sql import _all_queries, parse_queries, query
from devtools.support.database import insert_task_sql
from devtools.support.functions import ROOT

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


# --- the named queries ------------------------------------------------------------------------

SQL_DIR = ROOT / "layers" / "common" / "python" / "atcore" / "sql"

EXPECTED_PARAMETERS = {
    "create_task": ["execute_at", "task_type", "payload", "max_attempts", "created_by"],
    "create_tasks": ["created_by", "execute_ats", "task_types", "payloads", "max_attempts"],
    "update_task": ["execute_at", "payload", "max_attempts", "id", "changeable"],
    "retry_task": ["execute_at", "id", "retryable"],
    "list_attempts": ["id", "limit"],
    "task_stats": [],
    "find_idempotency_key": ["scope", "key", "ttl_hours"],
    "forget_expired_idempotency_key": ["scope", "key", "ttl_hours"],
    "claim_idempotency_key": ["scope", "key", "fingerprint", "status_code", "response", "task_ids"],
    "delete_expired_idempotency_keys": ["ttl_hours", "batch_size"],
    "get_task": ["id"],
    "cancel_task": ["id", "cancellable"],
    "task_state": ["id"],
    "ping": [],
    "list_tasks": [
        "by_due_day",
        "status",
        "task_type",
        "execute_after",
        "execute_before",
        "before_id",
        "limit",
        "offset",
        "max_bytes",
        "scan_by_id_max",
    ],
    "claim_due_tasks": ["lease_seconds", "batch_size"],
    "hand_over_due_tasks": ["handoff_seconds", "batch_size"],
    "start_attempts": ["lease_seconds", "ids", "attempts"],
    "release_handoffs": ["ids", "attempts"],
    "recover_expired_handoffs": ["batch_size"],
    "count_queued": [],
    "delete_expired_tasks": ["retention_days", "batch_size"],
    "record_outcomes": ["ids", "attempts", "succeeded", "errors", "retry_in_seconds"],
    "recover_expired_leases": ["batch_size"],
    "next_wake": [],
    "oldest_due_age": [],
    "listen_for_due_soon": [],
}


def placeholders(text: str) -> tuple[str, list[str]]:
    """What pg8000.native does with a query: the $n text and the parameter name behind each $n."""
    converted, make_vals = pg8000.native.to_statement(text)

    class Names(dict):
        def __getitem__(self, key):
            return key

    return converted, list(make_vals(Names()))


def test_parse_queries_splits_on_name_lines():
    text = (
        "-- file comment, not a query\n\n"
        "-- name: first\n-- its comment\nSELECT 1\n\n"
        "-- name: second_one\nSELECT :a,\n       :b\n"
        "--name: not_a_marker\n"
    )
    assert parse_queries(text) == {
        "first": "-- its comment\nSELECT 1",
        "second_one": "SELECT :a,\n       :b\n--name: not_a_marker",
    }
    assert parse_queries("-- just a comment\n") == {}


def test_sql_files_define_the_expected_queries_once_each():
    texts = [path.read_text(encoding="utf-8") for path in sorted(SQL_DIR.glob("*.sql"))]
    markers = [name for text in texts for name in re.findall(r"^-- name: (\w+)\s*$", text, re.MULTILINE)]
    assert len(markers) == len(set(markers)), "a query name is defined twice"
    queries = _all_queries()
    assert set(markers) == set(queries)
    assert set(EXPECTED_PARAMETERS) <= set(queries)
    for name in queries:
        assert query(name) == queries[name] and query(name).strip() and not query(name).startswith("-- name:")
    with pytest.raises(KeyError):
        query("no_such_query")


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_each_query_has_exactly_its_parameters_as_pg8000_sees_them(name):
    converted, names = placeholders(query(name))
    assert sorted(set(names)) == sorted(EXPECTED_PARAMETERS[name])
    assert len(names) == len(set(names))  # a name used twice is one $n
    code = re.sub(r"--[^\n]*", "", converted)
    assert not re.search(r"(?<![:\w]):[A-Za-z_]", code), "a :name was left in the statement"
    assert code.count("::") == re.sub(r"--[^\n]*", "", query(name)).count("::")  # casts untouched


def test_to_statement_turns_names_in_casts_into_numbered_parameters():
    converted, names = placeholders(
        "SELECT CAST(:x AS text) IS NULL OR s = :x, CAST(:p AS jsonb), :q::jsonb, '{}'::jsonb"
    )
    assert converted == "SELECT CAST($1 AS text) IS NULL OR s = $1, CAST($2 AS jsonb), $3::jsonb, '{}'::jsonb"
    assert names == ["x", "p", "q"]
    converted, names = placeholders("SELECT ':not_a_param', \"col:x\" -- :nor_this\n, $$:nor$$")
    assert names == [] and converted == "SELECT ':not_a_param', \"col:x\" -- :nor_this\n, $$:nor$$"


def _query_calls() -> list[tuple[str, str, set[str] | None]]:
    """Every `<x>.run(query("name"), kw=...)` in the layer and functions: (where, name, keywords)."""
    calls = []
    sources = [*(ROOT / "layers" / "common" / "python").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Call)):
                continue
            inner = node.args[0]
            if not (
                isinstance(inner.func, ast.Name)
                and inner.func.id == "query"
                and inner.args
                and isinstance(inner.args[0], ast.Constant)
            ):
                continue
            keywords = {kw.arg for kw in node.keywords}
            calls.append(
                (f"{path.relative_to(ROOT)}:{node.lineno}", inner.args[0].value, None if None in keywords else keywords)
            )
    return calls


def test_every_query_call_in_the_code_passes_exactly_the_parameters_the_sql_names():
    calls = _query_calls()
    assert {"create_task", "list_tasks", "claim_due_tasks"} <= {name for _, name, _ in calls}
    for where, name, keywords in calls:
        _, names = placeholders(query(name))
        if keywords is not None:  # **kwargs: cannot tell statically
            assert keywords == set(names), f"{where}: {name} takes {sorted(names)}, called with {sorted(keywords)}"


def _insert(sql, status: str, task_type: str) -> int:
    extra = {
        "pending": {},
        "processing": {"attempts": "1", "lease_expires_at": "now()"},
        "completed": {"attempts": "1", "completed_at": "now()"},
        "failed": {"attempts": "3", "completed_at": "now()"},
        "cancelled": {},
    }[status]
    return sql.run(insert_task_sql(status=f"'{status}'", task_type=f"'{task_type}'", **extra))[0][0]


@pytest.mark.parametrize("through", ["pg8000", "atcore.db"])
def test_list_tasks_query_filters_by_status_and_type(sql, through):
    ids = {}
    for status, task_type in [
        ("pending", "a"),
        ("completed", "a"),
        ("pending", "b"),
        ("failed", "b"),
        ("completed", "b"),
        ("cancelled", "a"),
        ("processing", "a"),
    ]:
        ids.setdefault((status, task_type), []).append(_insert(sql, status, task_type))

    def execute(text, **params):
        if through == "pg8000":
            rows = sql.run(text, **params)
            return [dict(zip([column["name"] for column in sql.columns], row, strict=True)) for row in rows]
        with db.connection() as conn:  # the product's connection (pointed at this database by `database`)
            return conn.run_dicts(text, **params)

    def run(status=None, task_type=None, limit=50, offset=0, before_id=None, max_bytes=10**6):
        rows = execute(
            query("list_tasks"),
            status=status,
            task_type=task_type,
            execute_after=None,
            execute_before=None,
            by_due_day=False,
            scan_by_id_max=0,
            before_id=before_id,
            limit=limit,
            offset=offset,
            max_bytes=max_bytes,
        )
        return rows[0]["total"], [row["page_id"] for row in rows if row["page_id"] is not None], rows

    total, listed, _ = run()
    assert total == 7 and listed == sorted((i for v in ids.values() for i in v), reverse=True)
    total, listed, rows = run(status="completed")
    assert total == 2 and listed == sorted(ids[("completed", "a")] + ids[("completed", "b")], reverse=True)
    assert {row["status"] for row in rows} == {"completed"}
    assert run(task_type="b")[:2] == (
        3,
        sorted(ids[("pending", "b")] + ids[("failed", "b")] + ids[("completed", "b")], reverse=True),
    )
    assert run(status="pending", task_type="a")[:2] == (1, ids[("pending", "a")])
    assert run(status="failed", task_type="a")[:2] == (0, [])
    total, listed, rows = run(limit=2, offset=6)
    assert (total, len(listed)) == (7, 1)
    total, listed, rows = run(offset=100)  # past the end: the total, and one row of NULLs
    assert (total, listed) == (7, []) and len(rows) == 1
    assert {value for name, value in rows[0].items() if name not in ("total", "went_by_day")} == {None}
    everything = sorted((i for v in ids.values() for i in v), reverse=True)
    assert run(before_id=everything[2])[:2] == (7, everything[3:])  # a cursor's page: below its id; same total
    b_tasks = sorted(ids[("pending", "b")] + ids[("failed", "b")] + ids[("completed", "b")], reverse=True)
    assert run(task_type="b", before_id=b_tasks[0], limit=1)[:2] == (3, b_tasks[1:2])
    assert run(before_id=min(everything))[:2] == (7, [])
    # Rows after the first max_bytes of payload text come back as their id alone, in order.
    total, listed, rows = run(max_bytes=1)
    assert (total, listed) == (7, everything) and rows[0]["payload"] is not None
    assert all(
        {value for name, value in row.items() if name not in ("total", "page_id", "went_by_day")} == {None}
        for row in rows[1:]
    )
    payload_bytes = sql.run("SELECT octet_length(payload::text) FROM scheduled_tasks WHERE id = :id", id=everything[0])
    rows = run(max_bytes=payload_bytes[0][0] + 1)[2]
    assert [row["payload"] is not None for row in rows] == [True, True] + [False] * 5


@pytest.mark.parametrize("payload", [{"a": [1, "x"]}, "text", 42, [None], True])
def test_create_task_query_stores_the_payload_as_json_not_as_a_string(sql, payload):
    rows = sql.run(
        query("create_task"),
        execute_at="2099-01-01T00:00:00Z",
        task_type="t",
        payload=json.dumps(payload),
        max_attempts=3,
        created_by=None,
    )
    assert rows[0][3] == payload
    kinds = {dict: "object", str: "string", int: "number", list: "array", bool: "boolean"}
    assert sql.run("SELECT jsonb_typeof(payload) FROM scheduled_tasks WHERE id = :id", id=rows[0][0]) == [
        [kinds[type(payload)]]
    ]


def test_a_task_written_due_soon_wakes_the_dispatcher_whatever_writes_it(sql, database_server, database):
    listener = database_server.connect(database)
    try:
        listener.run("LISTEN at_task_due_soon")
        args = {"task_type": "t", "payload": "{}", "max_attempts": 3, "created_by": None}

        def notified() -> list[str]:
            listener.run("SELECT 1")
            channels = [channel for _, channel, _ in listener.notifications]
            listener.notifications.clear()
            return channels

        # A create due later than the wake horizon (1 s) notifies nobody; one due within it does.
        [[later]] = sql.run(
            "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
            "VALUES (now() + interval '1 hour', 't', '{}') RETURNING id"
        )
        assert notified() == []
        sql.run(query("create_task"), execute_at=sql.run("SELECT now() + interval '0.5 seconds'")[0][0], **args)
        assert notified() == ["at_task_due_soon"]
        # So does an UPDATE that makes a task due soon (a reschedule, a retry), and not one that doesn't.
        sql.run("UPDATE scheduled_tasks SET execute_at = now() + interval '2 hours' WHERE id = :id", id=later)
        assert notified() == []
        sql.run("UPDATE scheduled_tasks SET execute_at = now() WHERE id = :id", id=later)
        assert notified() == ["at_task_due_soon"]
        # A task handed to the queue is not waiting for the dispatcher.
        sql.run("UPDATE scheduled_tasks SET queued_until = now() + interval '1 minute'")
        assert notified() == []
    finally:
        listener.close()
