"""SQL injection attempts through every input of every handler leave the database as it was.

Each classic injection string goes into every string field of a create (task_type, a payload key
and value, execute_at, max_attempts), every query parameter of the list (status, task_type,
limit, offset) and the path id of read and cancel. Afterwards the rows that existed are
byte-for-byte the same (count and an md5 of their text), and the only new rows are those a 201
answered, holding exactly what was sent.
"""

from __future__ import annotations

import json

import pytest

from devtools.support.functions import invoke, load_event

FUTURE = "2099-01-01T12:00:00Z"
INJECTIONS = [
    "'; DROP TABLE scheduled_tasks; --",
    "1 OR 1=1",
    "1' OR '1'='1",
    "' OR ''='",
    "' UNION SELECT id, payload::text FROM scheduled_tasks --",
    "1; DELETE FROM scheduled_tasks",
    "1); UPDATE scheduled_tasks SET status = 'cancelled'; --",
    "$1",
    "$1::text",
    ":id",
    ":task_type",
    "%s",
    "%(id)s",
    "{}",
    "?",
    "\\",
    "\\'",
    "\\\\'; --",
    "'",
    '"',
    "`",
    "/* */",
    "$$; DROP TABLE scheduled_tasks; $$",
    "E'\\x27'",
    "\x00",
    "1\x00; DROP TABLE scheduled_tasks",
    "%",
    "_",
    "pending' OR status <> 'pending",
    "*",
]


def snapshot(sql, up_to_id: int) -> tuple[int, str]:
    """(row count, md5 of every column of every row) of the rows with id <= up_to_id."""
    [[count, digest]] = sql.run(
        "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) "
        "FROM scheduled_tasks t WHERE id <= :up_to",
        up_to=up_to_id,
    )
    return count, digest


def list_event(**query):
    return load_event(
        "list_tasks",
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
    )


def id_event(name, raw_id):
    return load_event(name, path=f"/api/v1/tasks/{raw_id}", pathParameters={"id": raw_id})


def create(body) -> tuple[int, dict]:
    return invoke("create_task", load_event("create_task", body=json.dumps(body)))


@pytest.fixture
def seeded(sql):
    """Three tasks, one of them cancelled; returns the highest id."""
    ids = []
    for task_type, payload in (("send_email", {"to": "a@example.com"}), ("sms", ["x", 1]), ("pending", "text")):
        status, body = create({"execute_at": FUTURE, "task_type": task_type, "payload": payload})
        assert status == 201
        ids.append(body["task"]["id"])
    assert invoke("cancel_task", id_event("cancel_task", str(ids[0])))[0] == 200
    return max(ids)


@pytest.mark.parametrize("attack", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_through_every_input_changes_nothing_else(sql, seeded, attack):
    before = snapshot(sql, seeded)
    sent: dict[int, dict] = {}  # id -> the create body a 201 answered

    bodies = [
        {"execute_at": FUTURE, "task_type": attack, "payload": 1},
        {"execute_at": FUTURE, "task_type": "t", "payload": {attack: attack}},
        {"execute_at": FUTURE, "task_type": "t", "payload": [attack, {"nested": attack}]},
        {"execute_at": FUTURE, "task_type": "t", "payload": attack},
        {"execute_at": attack, "task_type": "t", "payload": 1},
        {"execute_at": FUTURE + attack, "task_type": "t", "payload": 1},
        {"execute_at": FUTURE, "task_type": "t", "payload": 1, "max_attempts": attack},
        {"execute_at": FUTURE, "task_type": "t", "payload": 1, attack: attack},
    ]
    for body in bodies:
        status, answer = create(body)
        assert status in (201, 400), (body, answer)
        if status == 201:
            sent[answer["task"]["id"]] = body
    assert len(sent) >= (1 if "\x00" in attack else 4)  # the attack was stored, not just refused

    for name in ("status", "task_type", "limit", "offset"):
        status, answer = invoke("list_tasks", list_event(**{name: attack}))
        assert status in (200, 400), (name, answer)
        if status == 200:
            assert name == "task_type"  # exact match: never a pattern, never everything
            [[matching]] = sql.run("SELECT count(*) FROM scheduled_tasks WHERE task_type = :t", t=attack)
            assert answer["total"] == matching and all(t["task_type"] == attack for t in answer["tasks"])

    for name in ("get_task", "cancel_task"):
        status, answer = invoke(name, id_event(name, attack))
        assert status in (400, 404), (name, answer)

    assert snapshot(sql, seeded) == before
    rows = sql.run(
        "SELECT id, task_type, payload, execute_at, status FROM scheduled_tasks WHERE id > :up_to ORDER BY id",
        up_to=seeded,
    )
    assert [row[0] for row in rows] == sorted(sent)
    for task_id, task_type, payload, execute_at, status in rows:
        body = sent[task_id]
        assert (task_type, payload, status) == (body["task_type"], body["payload"], "pending")
        assert execute_at.isoformat().replace("+00:00", "Z") == body["execute_at"]


def test_the_tables_are_all_still_there(sql, seeded):
    for attack in INJECTIONS:
        invoke("list_tasks", list_event(task_type=attack))
    tables = {row[0] for row in sql.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "scheduled_tasks" in tables
    assert snapshot(sql, seeded)[0] == 3
