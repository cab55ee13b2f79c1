"""db/migrate.py on deploy: a database that does not accept connections yet is waited for (RDS Proxy
may still be registering a new instance); any other error fails at once. No database needed."""

from __future__ import annotations

import pytest

import migrate
from atcore import db
from atcore.errors import DatabaseError, DatabaseUnavailable


class _Connection:
    def close(self) -> None:
        pass


@pytest.fixture
def no_waiting(monkeypatch):
    monkeypatch.setattr(migrate, "_CONNECT_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(migrate, "apply_migrations", lambda conn: ["0001_test"])
    monkeypatch.setattr("atcore.config.database_settings", lambda: object())


def refusing(error: Exception, attempts: list) -> object:
    def connect(settings):
        attempts.append(settings)
        raise error

    return connect


def test_waits_while_the_database_is_unavailable(monkeypatch, no_waiting):
    attempts = []

    def connect(settings):
        attempts.append(settings)
        if len(attempts) < 3:
            raise DatabaseUnavailable("database is unavailable, try again later")
        return _Connection()

    monkeypatch.setattr(db, "open_connection", connect)
    assert migrate.migrate_configured_database(connect_for_seconds=60) == ["0001_test"]
    assert len(attempts) == 3


def test_gives_up_after_its_time(monkeypatch, no_waiting):
    monkeypatch.setattr(migrate, "_CONNECT_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(db, "open_connection", refusing(DatabaseUnavailable("unavailable"), []))
    with pytest.raises(DatabaseUnavailable):
        migrate.migrate_configured_database(connect_for_seconds=0.05)


def test_other_errors_fail_at_once(monkeypatch, no_waiting):
    attempts: list = []
    monkeypatch.setattr(db, "open_connection", refusing(DatabaseError("internal database error"), attempts))
    with pytest.raises(DatabaseError):
        migrate.migrate_configured_database(connect_for_seconds=60)
    assert len(attempts) == 1


def test_the_cli_does_not_wait(monkeypatch, no_waiting):
    attempts: list = []
    monkeypatch.setattr(db, "open_connection", refusing(DatabaseUnavailable("unavailable"), attempts))
    with pytest.raises(DatabaseUnavailable):
        migrate.migrate_configured_database()
    assert len(attempts) == 1
