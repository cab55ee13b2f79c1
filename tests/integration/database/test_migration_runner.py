"""db/migrate.py applies the ordered migrations: once, in order, safely from two runners at once,
and never a file changed after it was applied. Each test gets a fresh, empty database."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pg8000.exceptions
import pg8000.native
import pytest

import migrate
from devtools.support.database import sqlstate, table_exists
from devtools.support.functions import ROOT

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


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
    connect_kwargs = {
        "user": database_server.user,
        "host": database_server.host,
        "port": database_server.port,
        "password": database_server.password,
        "database": empty_db,
    }
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
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DB_")},
        **database_server.env(empty_db),
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    runs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "db" / "migrate.py")],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
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
