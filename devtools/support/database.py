"""Small helpers on a raw pg8000 connection to a migrated database (tests and benchmarks)."""

from __future__ import annotations

import os
from typing import Any

import pytest

# A valid scheduled_tasks row as SQL literals; insert_task_sql(**overrides) changes some of them.
VALID_TASK_ROW = {
    "execute_at": "now()", "task_type": "'t'", "payload": "'{}'::jsonb", "status": "'pending'", "attempts": "0",
    "max_attempts": "3", "completed_at": "NULL", "lease_expires_at": "NULL", "queued_until": "NULL",
}  # fmt: skip


def insert_task_sql(**overrides: str) -> str:
    """An INSERT of one task from SQL literals (tests only: the values are the test's own text)."""
    row = VALID_TASK_ROW | overrides
    return f"INSERT INTO scheduled_tasks ({', '.join(row)}) VALUES ({', '.join(row.values())}) RETURNING id"


def migrate_database(conn: Any) -> None:
    """Apply every migration to the (new) database `conn` is connected to, then close it."""
    from migrate import apply_migrations

    try:
        apply_migrations(conn)
    finally:
        conn.close()


def sqlstate(exc: Exception) -> str:
    """The SQLSTATE of a pg8000 error, or ''."""
    details: Any = exc.args[0] if exc.args else None
    return str(details.get("C", "")) if isinstance(details, dict) else ""


def table_exists(conn: Any, name: str) -> bool:
    return bool(conn.run("SELECT to_regclass(:name) IS NOT NULL", name=f"public.{name}")[0][0])


def point_database_at(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Replace every DB_* variable with env's, and forget cached settings and pooled connections."""
    from atcore import config, db

    for key in list(os.environ):
        if key.startswith("DB_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config.database_settings.cache_clear()
    db.reset()


def empty_every_table(conn: Any) -> None:
    """Every table the migrations made, whatever they are (a named list would miss the next one)."""
    tables = [
        row[0]
        for row in conn.run(
            "SELECT quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
    ]
    conn.run(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
