"""Fixtures of the database tests: empty databases, connections to them, DB_* pointed at one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pg8000.exceptions
import pg8000.native
import pytest

import migrate
from atcore import config, db
from devtools.support.database import point_database_at

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


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
