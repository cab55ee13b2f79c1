"""db/migrate.py and the schema it builds, against a real PostgreSQL; plus the named queries in
atcore/sql/*.sql as pg8000 sees them.

Schema tests get a fresh, empty database each (created and dropped here); constraint and query
tests use the session's migrated database through the `sql` fixture.
"""

from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.exceptions
import pg8000.native
import pytest

import migrate
from atcore import config, db
from atcore.sql import _all_queries, parse_queries, query
from conftest import ROOT, LambdaContext, point_database_at

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def empty_db(database_server) -> Iterator[str]:
    """A brand-new database with nothing in it, dropped after the test."""
    name = f"at_mig_{uuid.uuid4().hex[:10]}"
    database_server.create_database(name)
    try:
        yield name
    finally:
        database_server.drop_database(name)


@pytest.fixture
def conn_to(database_server) -> Iterator:
    """conn_to(name) -> a pg8000.native connection, closed after the test."""
    opened: list[pg8000.native.Connection] = []

    def connect(name: str) -> pg8000.native.Connection:
        opened.append(database_server.connect(name))
        return opened[-1]

    yield connect
    for conn in opened:
        db.close_quietly(conn)


@pytest.fixture
def db_env(monkeypatch):
    """db_env(env) points atcore.config at env (DB_* only, others removed); caches are reset around."""
    yield lambda env: point_database_at(monkeypatch, env)
    config.database_settings.cache_clear()
    db.reset()


def table_exists(conn, name: str) -> bool:
    return conn.run("SELECT to_regclass(:name) IS NOT NULL", name=f"public.{name}")[0][0]


def recorded(conn) -> list[tuple[str, str]]:
    return [tuple(row) for row in conn.run("SELECT version, checksum FROM schema_migrations ORDER BY version")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()


def migration_lock_is_free(conn) -> bool:
    """True when nobody holds the migration lock (taken and released again to find out)."""
    if not conn.run("SELECT pg_try_advisory_lock(:key)", key=migrate._LOCK_KEY)[0][0]:
        return False
    conn.run("SELECT pg_advisory_unlock(:key)", key=migrate._LOCK_KEY)
    return True


def copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, target)
    return target


def sqlstate(exc: pg8000.exceptions.DatabaseError) -> str:
    return exc.args[0].get("C", "") if exc.args and isinstance(exc.args[0], dict) else ""


# --- applying ---------------------------------------------------------------------------------


def test_there_is_at_least_the_first_migration():
    assert ALL_VERSIONS[0] == "0001_scheduled_tasks"
    assert ALL_VERSIONS == sorted(ALL_VERSIONS)


def test_migrating_an_empty_database_applies_every_file_and_records_checksums(empty_db, conn_to):
    conn = conn_to(empty_db)
    assert not table_exists(conn, TABLE)
    assert migrate.apply_migrations(conn) == ALL_VERSIONS
    assert table_exists(conn, TABLE)
    assert recorded(conn) == [(path.stem, sha256(path)) for path in migrate.migration_files()]
    assert migration_lock_is_free(conn_to(empty_db))


def test_second_run_applies_nothing_and_changes_nothing(empty_db, conn_to):
    conn = conn_to(empty_db)
    migrate.apply_migrations(conn)
    before = conn.run("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    assert migrate.apply_migrations(conn) == []
    assert migrate.apply_migrations(conn_to(empty_db)) == []
    assert conn.run("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version") == before


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
}

EXPECTED_INDEXES = {
    "scheduled_tasks_pkey": "UNIQUE INDEX scheduled_tasks_pkey ON public.scheduled_tasks USING btree (id)",
    "scheduled_tasks_due_idx": "USING btree (execute_at) WHERE ((status = 'pending'::text) AND (queued_until IS NULL))",
    "scheduled_tasks_queued_idx": "USING btree (queued_until) WHERE (queued_until IS NOT NULL)",
    "scheduled_tasks_finished_idx": (
        "USING btree (updated_at) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text]))"),
    "scheduled_tasks_lease_idx": "USING btree (lease_expires_at) WHERE (status = 'processing'::text)",
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


def _migrate_in_child(connect_kwargs: dict, barrier, results) -> None:
    """Run in a spawned process: connect, wait for the sibling, migrate, report."""
    conn = pg8000.native.Connection(**connect_kwargs)
    try:
        barrier.wait(timeout=60)
        results.put(("ok", migrate.apply_migrations(conn)))
    except Exception as exc:
        results.put(("error", repr(exc)))
    finally:
        conn.close()


def test_two_processes_migrating_at_once_both_succeed_and_apply_once(database_server, empty_db, conn_to):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    connect_kwargs = {"user": database_server.user, "host": database_server.host, "port": database_server.port,
                      "password": database_server.password, "database": empty_db}
    children = [ctx.Process(target=_migrate_in_child, args=(connect_kwargs, barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    assert [child.exitcode for child in children] == [0, 0]
    assert sorted(outcomes, key=lambda o: len(o[1])) == [("ok", []), ("ok", ALL_VERSIONS)]
    conn = conn_to(empty_db)
    assert [version for version, _ in recorded(conn)] == ALL_VERSIONS
    assert table_exists(conn, TABLE)
    assert migration_lock_is_free(conn)


def test_two_cli_runs_waiting_on_the_lock_both_succeed_and_apply_once(database_server, empty_db, conn_to):
    """`python db/migrate.py` twice, both started while the lock is held, so they surely overlap."""
    gate = conn_to(empty_db)
    gate.run("SELECT pg_advisory_lock(:key)", key=migrate._LOCK_KEY)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DB_")}, **database_server.env(empty_db),
           "PYTHONPATH": str(ROOT / "layers" / "common" / "python"), "POWERTOOLS_LOG_LEVEL": "ERROR"}
    runs = [
        subprocess.Popen([sys.executable, str(ROOT / "db" / "migrate.py")], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        waiting = 0
        while time.monotonic() < deadline:
            waiting = gate.run(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )[0][0]
            if waiting == 2 or any(run.poll() is not None for run in runs):
                break
            time.sleep(0.05)
        assert waiting == 2, "both runners should be queued on the migration lock"
        gate.run("SELECT pg_advisory_unlock(:key)", key=migrate._LOCK_KEY)
        outputs = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    assert [run.returncode for run in runs] == [0, 0], outputs
    applied = sorted((json.loads(out.strip().splitlines()[-1])["applied"] for out, _ in outputs), key=len)
    assert applied == [[], ALL_VERSIONS]
    assert [version for version, _ in recorded(conn_to(empty_db))] == ALL_VERSIONS


def test_a_migration_changed_after_it_was_applied_is_refused(empty_db, conn_to, tmp_path):
    directory = copy_migrations(tmp_path)
    conn = conn_to(empty_db)
    assert migrate.apply_migrations(conn, directory) == ALL_VERSIONS
    first = directory / f"{ALL_VERSIONS[0]}.sql"
    first.write_text(first.read_text(encoding="utf-8") + "\n-- edited afterwards\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match=f"migration {ALL_VERSIONS[0]} was changed after it was applied"):
        migrate.apply_migrations(conn, directory)
    assert migration_lock_is_free(conn_to(empty_db))  # released despite the error
    assert [version for version, _ in recorded(conn)] == ALL_VERSIONS


def test_a_failing_migration_leaves_nothing_behind_and_can_be_fixed(empty_db, conn_to, tmp_path):
    directory = copy_migrations(tmp_path)
    broken = directory / "9999_broken.sql"
    broken.write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n", encoding="utf-8")
    (directory / "notes.sql").write_text("this is not SQL and must never run", encoding="utf-8")
    conn = conn_to(empty_db)
    with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
        migrate.apply_migrations(conn, directory)
    assert sqlstate(raised.value) == "22012"  # division_by_zero
    assert [version for version, _ in recorded(conn)] == ALL_VERSIONS  # the earlier files are kept
    assert not table_exists(conn, "half_done")  # the failed file's own work is rolled back
    assert migration_lock_is_free(conn_to(empty_db))
    broken.write_text("CREATE TABLE half_done (id int);\n", encoding="utf-8")
    assert migrate.apply_migrations(conn, directory) == ["9999_broken"]
    assert table_exists(conn, "half_done")


# --- the custom resource ----------------------------------------------------------------------


def cfn_event(request_type: str, **extra) -> dict:
    return {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:at-migrate",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/at/0a1b2c3d",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": {},
        **extra,
    }


@pytest.fixture
def cfn_responses(monkeypatch) -> list[dict]:
    sent: list[dict] = []

    def capture(event, context, status, reason=""):
        sent.append({"status": status, "reason": reason, "request_id": event["RequestId"]})

    monkeypatch.setattr(migrate, "_send_cfn_response", capture)
    return sent


def test_custom_resource_create_then_update_without_response_url(database_server, empty_db, conn_to, db_env):
    db_env(database_server.env(empty_db))
    assert migrate.lambda_handler(cfn_event("Create"), LambdaContext()) == {"applied": ALL_VERSIONS}
    assert table_exists(conn_to(empty_db), TABLE)
    assert migrate.lambda_handler(cfn_event("Update"), LambdaContext()) == {"applied": []}


def test_custom_resource_reports_success_to_cloudformation(database_server, empty_db, conn_to, db_env, cfn_responses):
    db_env(database_server.env(empty_db))
    event = cfn_event("Create", ResponseURL="https://cloudformation-custom-resource-response.example/abc")
    assert migrate.lambda_handler(event, LambdaContext()) == {"applied": ALL_VERSIONS}
    assert cfn_responses == [{"status": "SUCCESS", "reason": "", "request_id": event["RequestId"]}]
    assert table_exists(conn_to(empty_db), TABLE)


def test_custom_resource_reports_failure_to_cloudformation(database_server, db_env, cfn_responses):
    db_env(database_server.env(f"at_missing_{uuid.uuid4().hex[:8]}"))  # a database that does not exist
    event = cfn_event("Create", ResponseURL="https://cloudformation-custom-resource-response.example/abc")
    assert migrate.lambda_handler(event, LambdaContext()) == {"applied": []}
    assert len(cfn_responses) == 1
    assert cfn_responses[0]["status"] == "FAILED"
    assert cfn_responses[0]["reason"].startswith("migration failed: ")


def test_custom_resource_failure_without_response_url_raises(database_server, db_env):
    db_env(database_server.env(f"at_missing_{uuid.uuid4().hex[:8]}"))
    with pytest.raises(Exception):  # noqa: B017 - any error: the invocation must fail visibly
        migrate.lambda_handler(cfn_event("Create"), LambdaContext())


def test_custom_resource_delete_keeps_the_data_and_needs_no_database(db_env, cfn_responses):
    db_env({"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_CONNECT_TIMEOUT": "1"})  # nothing listens there
    event = cfn_event("Delete", ResponseURL="https://cloudformation-custom-resource-response.example/abc",
                      PhysicalResourceId="at-database-migrations")
    assert migrate.lambda_handler(event, LambdaContext()) == {"applied": []}
    assert [r["status"] for r in cfn_responses] == ["SUCCESS"]


class _Opened:
    def __init__(self, log: list, request, timeout):
        log.append((request, timeout))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/response", "file:///etc/passwd", "ftp://example.com/x", ""])
def test_send_cfn_response_refuses_anything_but_https(monkeypatch, url):
    opened: list = []
    monkeypatch.setattr(migrate.urllib.request, "urlopen", lambda request, timeout: _Opened(opened, request, timeout))
    with pytest.raises(ValueError, match="https"):
        migrate._send_cfn_response(cfn_event("Create", ResponseURL=url), LambdaContext(), "SUCCESS")
    assert opened == []


def test_send_cfn_response_puts_the_documented_body(monkeypatch):
    opened: list = []
    monkeypatch.setattr(migrate.urllib.request, "urlopen", lambda request, timeout: _Opened(opened, request, timeout))
    url = "https://cloudformation-custom-resource-response.example/path?sig=1"
    event = cfn_event("Create", ResponseURL=url)
    migrate._send_cfn_response(event, LambdaContext(), "FAILED", reason="migration failed: RuntimeError")
    [(request, timeout)] = opened
    assert request.full_url == url and request.get_method() == "PUT"
    assert request.get_header("Content-type") == ""  # the presigned S3 URL is signed without one
    assert 0 < timeout <= 30
    assert json.loads(request.data) == {
        "Status": "FAILED",
        "Reason": "migration failed: RuntimeError",
        "PhysicalResourceId": "at-database-migrations",
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": "DatabaseMigrations",
    }


# --- constraints: the database itself refuses invalid states ----------------------------------

VALID = {
    "execute_at": "now()", "task_type": "'t'", "payload": "'{}'::jsonb", "status": "'pending'", "attempts": "0",
    "max_attempts": "3", "completed_at": "NULL", "lease_expires_at": "NULL", "queued_until": "NULL",
}  # fmt: skip


def insert_sql(**overrides: str) -> str:
    row = VALID | overrides
    return f"INSERT INTO scheduled_tasks ({', '.join(row)}) VALUES ({', '.join(row.values())}) RETURNING id"


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
    assert sql.run(insert_sql(**overrides))[0][0] >= 1


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
        ({"status": "'processing'", "attempts": "1", "lease_expires_at": "now()", "queued_until": "now()"},
         "23514", "queued_only_while_pending"),
        ({"status": "'cancelled'", "queued_until": "now()"}, "23514", "queued_only_while_pending"),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={val[:12]}" for k, val in v.items()) if isinstance(v, dict) else "-",
)
def test_invalid_inserts_are_refused(sql, overrides, code, constraint):
    with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
        sql.run(insert_sql(**overrides))
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
    task_id = sql.run(insert_sql())[0][0]
    before = sql.run("SELECT * FROM scheduled_tasks WHERE id = :id", id=task_id)
    with pytest.raises(pg8000.exceptions.DatabaseError) as raised:
        sql.run(f"UPDATE scheduled_tasks SET {assignments} WHERE id = :id", id=task_id)
    assert sqlstate(raised.value) == "23514" and raised.value.args[0].get("n") == constraint
    assert sql.run("SELECT * FROM scheduled_tasks WHERE id = :id", id=task_id) == before


def test_a_legal_lifecycle_passes_every_constraint(sql):
    task_id = sql.run(insert_sql())[0][0]
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


# --- the named queries ------------------------------------------------------------------------

SQL_DIR = ROOT / "layers" / "common" / "python" / "atcore" / "sql"

EXPECTED_PARAMETERS = {
    "create_task": ["execute_at", "task_type", "payload", "max_attempts", "wake_horizon_seconds"],
    "get_task": ["id"],
    "cancel_task": ["id"],
    "task_status": ["id"],
    "ping": [],
    "list_tasks": ["status", "task_type", "before_id", "limit", "offset", "max_bytes"],
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
    converted, names = placeholders("SELECT CAST(:x AS text) IS NULL OR s = :x, CAST(:p AS jsonb), :q::jsonb, '{}'::jsonb")
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
            if not (isinstance(inner.func, ast.Name) and inner.func.id == "query" and inner.args
                    and isinstance(inner.args[0], ast.Constant)):
                continue
            keywords = {kw.arg for kw in node.keywords}
            calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", inner.args[0].value,
                          None if None in keywords else keywords))
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
    return sql.run(insert_sql(status=f"'{status}'", task_type=f"'{task_type}'", **extra))[0][0]


@pytest.mark.parametrize("through", ["pg8000", "atcore.db"])
def test_list_tasks_query_filters_by_status_and_type(sql, through):
    ids = {}
    for status, task_type in [("pending", "a"), ("completed", "a"), ("pending", "b"), ("failed", "b"),
                              ("completed", "b"), ("cancelled", "a"), ("processing", "a")]:
        ids.setdefault((status, task_type), []).append(_insert(sql, status, task_type))

    def execute(text, **params):
        if through == "pg8000":
            return sql.run(text, **params)
        with db.connection() as conn:  # the product's connection (pointed at this database by `database`)
            return conn.run(text, **params)

    def run(status=None, task_type=None, limit=50, offset=0, before_id=None, max_bytes=10**6):
        rows = execute(query("list_tasks"), status=status, task_type=task_type, before_id=before_id, limit=limit,
                       offset=offset, max_bytes=max_bytes)
        return rows[0][0], [row[1] for row in rows if row[1] is not None], rows

    total, listed, _ = run()
    assert total == 7 and listed == sorted((i for v in ids.values() for i in v), reverse=True)
    total, listed, rows = run(status="completed")
    assert total == 2 and listed == sorted(ids[("completed", "a")] + ids[("completed", "b")], reverse=True)
    assert {row[5] for row in rows} == {"completed"}
    assert run(task_type="b")[:2] == (3, sorted(ids[("pending", "b")] + ids[("failed", "b")] + ids[("completed", "b")], reverse=True))
    assert run(status="pending", task_type="a")[:2] == (1, ids[("pending", "a")])
    assert run(status="failed", task_type="a")[:2] == (0, [])
    total, listed, rows = run(limit=2, offset=6)
    assert (total, len(listed)) == (7, 1)
    total, listed, rows = run(offset=100)  # past the end: the total, and one row of NULLs
    assert (total, listed) == (7, []) and len(rows) == 1 and set(rows[0][1:]) == {None}
    everything = sorted((i for v in ids.values() for i in v), reverse=True)
    assert run(before_id=everything[2])[:2] == (7, everything[3:])  # a cursor's page: below its id; same total
    b_tasks = sorted(ids[("pending", "b")] + ids[("failed", "b")] + ids[("completed", "b")], reverse=True)
    assert run(task_type="b", before_id=b_tasks[0], limit=1)[:2] == (3, b_tasks[1:2])
    assert run(before_id=min(everything))[:2] == (7, [])
    # Rows after the first max_bytes of payload text come back as their id alone, in order.
    total, listed, rows = run(max_bytes=1)
    assert (total, listed) == (7, everything) and rows[0][4] is not None
    assert all(row[2:] == [None] * 10 for row in rows[1:])
    payload_bytes = sql.run("SELECT octet_length(payload::text) FROM scheduled_tasks WHERE id = :id", id=everything[0])
    rows = run(max_bytes=payload_bytes[0][0] + 1)[2]
    assert [row[4] is not None for row in rows] == [True, True] + [False] * 5


@pytest.mark.parametrize("payload", [{"a": [1, "x"]}, "text", 42, [None], True])
def test_create_task_query_stores_the_payload_as_json_not_as_a_string(sql, payload):
    rows = sql.run(query("create_task"), execute_at="2099-01-01T00:00:00Z", task_type="t",
                   payload=json.dumps(payload), max_attempts=3, wake_horizon_seconds=1.0)
    assert rows[0][3] == payload
    kinds = {dict: "object", str: "string", int: "number", list: "array", bool: "boolean"}
    assert sql.run("SELECT jsonb_typeof(payload) FROM scheduled_tasks WHERE id = :id", id=rows[0][0]) == [[kinds[type(payload)]]]


def test_create_task_query_wakes_the_dispatcher_only_for_tasks_due_soon(sql, database_server, database):
    listener = database_server.connect(database)
    try:
        listener.run("LISTEN at_task_due_soon")
        args = {"task_type": "t", "payload": "{}", "max_attempts": 3, "wake_horizon_seconds": 5.0}
        sql.run(query("create_task"), execute_at="2099-01-01T00:00:00Z", **args)
        listener.run("SELECT 1")
        assert list(listener.notifications) == []
        sql.run(query("create_task"), execute_at=sql.run("SELECT now() + interval '2 seconds'")[0][0], **args)
        listener.run("SELECT 1")
        assert [channel for _, channel, _ in listener.notifications] == ["at_task_due_soon"]
    finally:
        listener.close()


def test_task_counts_follow_every_kind_of_write(sql):
    """0002's triggers keep scheduled_task_counts equal to count(*) per (status, task_type)."""

    def counts_by_table():
        return sorted(map(tuple, sql.run(
            "SELECT status, task_type, sum(n)::bigint FROM scheduled_task_counts "
            "GROUP BY status, task_type HAVING sum(n) <> 0")))

    def counts_by_rows():
        return sorted(map(tuple, sql.run(
            "SELECT status, task_type, count(*) FROM scheduled_tasks GROUP BY status, task_type")))

    sql.run("INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
            "SELECT now() + interval '1 hour', 't' || (i % 3), '{}' FROM generate_series(1, 30) AS i")
    assert counts_by_table() == counts_by_rows()
    sql.run("UPDATE scheduled_tasks SET status = 'cancelled' WHERE id % 4 = 0")
    sql.run("UPDATE scheduled_tasks SET status = 'processing', attempts = 1, "
            "lease_expires_at = now() + interval '1 minute' WHERE id % 5 = 0 AND status = 'pending'")
    sql.run("UPDATE scheduled_tasks SET task_type = 'renamed' WHERE id = 1")
    sql.run("DELETE FROM scheduled_tasks WHERE id % 7 = 0")
    assert counts_by_table() == counts_by_rows()
    sql.run("TRUNCATE scheduled_tasks CASCADE")
    assert counts_by_table() == [] and counts_by_rows() == []
