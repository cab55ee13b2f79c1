"""The schema the migrations build: columns, constraints and indexes, the states the database
itself refuses, and the counts its triggers keep."""

from __future__ import annotations

import pg8000.exceptions
import pg8000.native
import pytest

import migrate
from devtools.support.database import insert_task_sql, sqlstate

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


EXPECTED_COLUMNS = {
    # name: (data_type, nullable, default, varchar length)
    "id": ("bigint", "NO", None, None),
    "execute_at": ("timestamp with time zone", "NO", None, None),
    "task_type": ("character varying", "NO", None, 50),
    "payload": ("jsonb", "NO", None, None),
    "status": ("text", "NO", "'pending'::text", None),
    "attempts": ("integer", "NO", "0", None),
    "max_attempts": ("integer", "NO", "3", None),
    "created_at": ("timestamp with time zone", "NO", "now()", None),
    "updated_at": ("timestamp with time zone", "NO", "now()", None),
    "completed_at": ("timestamp with time zone", "YES", None, None),
    "error_message": ("text", "YES", None, None),
    "lease_expires_at": ("timestamp with time zone", "YES", None, None),
    "queued_until": ("timestamp with time zone", "YES", None, None),
    "attempts_before_retry": ("integer", "NO", "0", None),
    "created_by": ("text", "YES", None, None),
}

EXPECTED_INDEXES = {
    "scheduled_tasks_pkey": "UNIQUE INDEX scheduled_tasks_pkey ON public.scheduled_tasks USING btree (id)",
    "scheduled_tasks_due_idx": "USING btree (execute_at) WHERE ((status = 'pending'::text) AND (queued_until IS NULL))",
    "scheduled_tasks_queued_idx": "USING btree (queued_until) WHERE (queued_until IS NOT NULL)",
    "scheduled_tasks_finished_idx": (
        "USING btree (updated_at) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text]))"
    ),
    "scheduled_tasks_lease_idx": "USING btree (lease_expires_at) WHERE (status = 'processing'::text)",
    "scheduled_tasks_due_day_idx": "USING btree (at_due_day(execute_at), id) INCLUDE (execute_at, status, task_type)",
    "scheduled_tasks_execute_at_idx": "USING btree (execute_at) INCLUDE (status, task_type, id)",
    "scheduled_tasks_status_id_idx": "USING btree (status, id)",
    "scheduled_tasks_type_id_idx": "USING btree (task_type, id)",
    "scheduled_tasks_type_status_id_idx": "USING btree (task_type, status, id)",
}

EXPECTED_CHECKS = {
    # constraint name: fragments its definition must contain
    "scheduled_tasks_task_type_check": ["char_length((task_type)::text) >= 1"],
    "scheduled_tasks_payload_check": ["payload <> 'null'::jsonb"],
    "scheduled_tasks_status_check": ["'pending'", "'processing'", "'completed'", "'failed'", "'cancelled'"],
    "scheduled_tasks_max_attempts_check": ["max_attempts >= 1", "max_attempts <= 100"],
    "attempts_within_limit": ["attempts >= 0", "attempts <= max_attempts"],
    "completed_at_iff_finished": ["completed_at IS NOT NULL", "'completed'", "'failed'"],
    "lease_iff_processing": ["lease_expires_at IS NOT NULL", "'processing'"],
    "processing_has_attempt": ["status <> 'processing'", "attempts >= 1"],
    "queued_only_while_pending": ["queued_until IS NULL", "'pending'"],
    "attempts_before_retry_not_negative": ["attempts_before_retry >= 0"],
}


def test_schema_has_the_table_columns_constraints_and_indexes(empty_db, conn_to):
    conn = conn_to(empty_db)
    migrate.apply_migrations(conn)

    columns = {
        name: (data_type, nullable, default, length)
        for name, data_type, nullable, default, length in conn.run(
            "SELECT column_name, data_type, is_nullable, column_default, character_maximum_length"
            " FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :t",
            t=TABLE,
        )
    }
    assert columns == EXPECTED_COLUMNS
    identity = conn.run(
        "SELECT is_identity, identity_generation FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = :t AND column_name = 'id'",
        t=TABLE,
    )
    assert identity == [["YES", "BY DEFAULT"]]

    constraints = {
        name: (kind, definition)
        for name, kind, definition in conn.run(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = CAST(:t AS regclass)",
            t=f"public.{TABLE}",
        )
    }
    assert constraints.pop("scheduled_tasks_pkey") == ("p", "PRIMARY KEY (id)")
    # PostgreSQL 15 keeps NOT NULL out of pg_constraint, 18 lists them as 'n': not checked here.
    checks = {name: definition for name, (kind, definition) in constraints.items() if kind == "c"}
    assert set(checks) == set(EXPECTED_CHECKS)
    for name, fragments in EXPECTED_CHECKS.items():
        for fragment in fragments:
            assert fragment in checks[name], (name, checks[name])
    assert {kind for kind, _ in constraints.values()} <= {"c", "n"}

    indexes = dict(
        conn.run("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = :t", t=TABLE)
    )
    assert set(indexes) == set(EXPECTED_INDEXES)
    for name, definition in EXPECTED_INDEXES.items():
        assert indexes[name].endswith(definition), indexes[name]

    comment = conn.run("SELECT obj_description(CAST(:t AS regclass), 'pg_class')", t=f"public.{TABLE}")[0][0]
    assert comment and "One-off tasks" in comment


# --- constraints: the database itself refuses invalid states ----------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"payload": "'\"text\"'::jsonb"},
        {"payload": "'[]'::jsonb"},
        {"max_attempts": "1"},
        {"max_attempts": "100", "attempts": "100", "status": "'failed'", "completed_at": "now()"},
        {"status": "'processing'", "attempts": "1", "lease_expires_at": "now()"},
        {"status": "'completed'", "attempts": "1", "completed_at": "now()"},
        {"status": "'failed'", "attempts": "3", "completed_at": "now()"},
        {"status": "'cancelled'"},
        {"task_type": "'" + "x" * 50 + "'"},
        {"queued_until": "now()"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_valid_states_are_accepted(sql, overrides):
    assert sql.run(insert_task_sql(**overrides))[0][0] >= 1


@pytest.mark.parametrize(
    "overrides, code, constraint",
    [
        ({"payload": "'null'::jsonb"}, "23514", "scheduled_tasks_payload_check"),
        ({"payload": "NULL"}, "23502", None),
        ({"execute_at": "NULL"}, "23502", None),
        ({"task_type": "''"}, "23514", "scheduled_tasks_task_type_check"),
        ({"task_type": "'" + "x" * 51 + "'"}, "22001", None),
        ({"max_attempts": "0"}, "23514", "scheduled_tasks_max_attempts_check"),
        ({"max_attempts": "101"}, "23514", "scheduled_tasks_max_attempts_check"),
        ({"status": "'done'"}, "23514", "scheduled_tasks_status_check"),
        ({"status": "'processing'", "attempts": "1"}, "23514", "lease_iff_processing"),
        ({"lease_expires_at": "now()"}, "23514", "lease_iff_processing"),
        ({"status": "'processing'", "lease_expires_at": "now()"}, "23514", "processing_has_attempt"),
        ({"status": "'completed'", "attempts": "1"}, "23514", "completed_at_iff_finished"),
        ({"status": "'failed'", "attempts": "3"}, "23514", "completed_at_iff_finished"),
        ({"completed_at": "now()"}, "23514", "completed_at_iff_finished"),
        ({"attempts": "4", "max_attempts": "3"}, "23514", "attempts_within_limit"),
        ({"attempts": "-1"}, "23514", "attempts_within_limit"),
        (
            {"status": "'processing'", "attempts": "1", "lease_expires_at": "now()", "queued_until": "now()"},
            "23514",
            "queued_only_while_pending",
        ),
        ({"status": "'cancelled'", "queued_until": "now()"}, "23514", "queued_only_while_pending"),
    ],
    ids=lambda v: (
        v if isinstance(v, str) else ",".join(f"{k}={val[:12]}" for k, val in v.items()) if isinstance(v, dict) else "-"
    ),
)
def test_invalid_inserts_are_refused(sql, overrides, code, constraint):
    with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
        sql.run(insert_task_sql(**overrides))
    assert sqlstate(raised.value) == code, raised.value
    if constraint:
        assert raised.value.args[0].get("n") == constraint, raised.value
    assert sql.run("SELECT count(*) FROM scheduled_tasks")[0][0] == 0


@pytest.mark.parametrize(
    "assignments, constraint",
    [
        ("status = 'processing', attempts = 1", "lease_iff_processing"),
        ("status = 'completed'", "completed_at_iff_finished"),
        ("status = 'done'", "scheduled_tasks_status_check"),
        ("attempts = max_attempts + 1", "attempts_within_limit"),
        ("max_attempts = 0", "scheduled_tasks_max_attempts_check"),
        ("payload = 'null'::jsonb", "scheduled_tasks_payload_check"),
        ("task_type = ''", "scheduled_tasks_task_type_check"),
        ("status = 'cancelled', queued_until = now()", "queued_only_while_pending"),
    ],
)
def test_invalid_updates_are_refused_and_the_row_is_unchanged(sql, assignments, constraint):
    task_id = sql.run(insert_task_sql())[0][0]
    before = sql.run("SELECT * FROM scheduled_tasks WHERE id = :id", id=task_id)
    with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
        sql.run(f"UPDATE scheduled_tasks SET {assignments} WHERE id = :id", id=task_id)
    assert sqlstate(raised.value) == "23514" and raised.value.args[0].get("n") == constraint
    assert sql.run("SELECT * FROM scheduled_tasks WHERE id = :id", id=task_id) == before


def test_a_legal_lifecycle_passes_every_constraint(sql):
    task_id = sql.run(insert_task_sql())[0][0]
    steps = [
        "queued_until = now() + interval '1 minute'",  # handed to the queue
        "status = 'processing', attempts = 1, lease_expires_at = now() + interval '1 minute', queued_until = NULL",
        "status = 'pending', lease_expires_at = NULL",  # a retry
        "status = 'processing', attempts = 2, lease_expires_at = now() + interval '1 minute'",
        "status = 'completed', lease_expires_at = NULL, completed_at = now()",
    ]
    for step in steps:
        sql.run(f"UPDATE scheduled_tasks SET {step} WHERE id = :id", id=task_id)
    assert sql.run("SELECT status, attempts FROM scheduled_tasks WHERE id = :id", id=task_id) == [["completed", 2]]


DUE_DAY_COUNTS_BY_TABLE = (
    "SELECT due_day, status, task_type, sum(n)::bigint FROM scheduled_task_due_day_counts "
    "GROUP BY 1, 2, 3 HAVING sum(n) <> 0"
)
DUE_DAY_COUNTS_BY_ROWS = (
    "SELECT date_trunc('day', execute_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', status, task_type, count(*) "
    "FROM scheduled_tasks GROUP BY 1, 2, 3"
)  # the UTC day written another way than at_due_day's date_bin


def test_task_counts_follow_every_kind_of_write(sql):
    """0002's and 0012's triggers keep scheduled_task_counts and scheduled_task_due_day_counts equal
    to count(*) per (status, task_type) and per (UTC day of execute_at, status, task_type)."""

    def due_day_counts():
        by_table = sorted(map(tuple, sql.run(DUE_DAY_COUNTS_BY_TABLE)))
        by_rows = sorted(map(tuple, sql.run(DUE_DAY_COUNTS_BY_ROWS)))
        return by_table, by_rows

    def counts_by_table():
        return sorted(
            map(
                tuple,
                sql.run(
                    "SELECT status, task_type, sum(n)::bigint FROM scheduled_task_counts "
                    "GROUP BY status, task_type HAVING sum(n) <> 0"
                ),
            )
        )

    def counts_by_rows():
        return sorted(
            map(tuple, sql.run("SELECT status, task_type, count(*) FROM scheduled_tasks GROUP BY status, task_type"))
        )

    sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT TIMESTAMPTZ '2099-01-01 23:00:00Z' + interval '7 minutes' * i, 't' || (i % 3), '{}' "
        "FROM generate_series(1, 30) AS i"
    )  # across a UTC midnight, one task exactly on it
    assert counts_by_table() == counts_by_rows()
    by_table, by_rows = due_day_counts()
    assert by_table == by_rows and len({day for day, *_ in by_rows}) == 2
    sql.run("UPDATE scheduled_tasks SET execute_at = execute_at + interval '1 day' WHERE id % 3 = 0")  # a PATCH
    sql.run("UPDATE scheduled_tasks SET status = 'cancelled' WHERE id % 4 = 0")
    sql.run(
        "UPDATE scheduled_tasks SET status = 'processing', attempts = 1, "
        "lease_expires_at = now() + interval '1 minute' WHERE id % 5 = 0 AND status = 'pending'"
    )
    sql.run("UPDATE scheduled_tasks SET task_type = 'renamed' WHERE id = 1")
    sql.run("DELETE FROM scheduled_tasks WHERE id % 7 = 0")
    assert counts_by_table() == counts_by_rows()
    by_table, by_rows = due_day_counts()
    assert by_table == by_rows and len({day for day, *_ in by_rows}) == 3
    sql.run("TRUNCATE scheduled_tasks CASCADE")
    assert counts_by_table() == [] and counts_by_rows() == []
    assert due_day_counts() == ([], [])


def test_the_due_day_counts_start_from_the_tasks_already_there(empty_db, conn_to, tmp_path):
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in migrate.migration_files():
        if path.name < "0012_":
            (earlier / path.name).write_bytes(path.read_bytes())
    conn = conn_to(empty_db)
    migrate.apply_migrations(conn, earlier)
    conn.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT TIMESTAMPTZ '2099-03-01Z' + interval '5 hours' * i, 't' || (i % 2), '{}' FROM generate_series(1, 20) AS i"
    )
    assert migrate.apply_migrations(conn) == [path.stem for path in migrate.migration_files() if path.name >= "0012_"]
    assert sorted(map(tuple, conn.run(DUE_DAY_COUNTS_BY_TABLE))) == sorted(map(tuple, conn.run(DUE_DAY_COUNTS_BY_ROWS)))
    assert conn.run("SELECT sum(n) FROM scheduled_task_due_day_counts")[0][0] == 20
