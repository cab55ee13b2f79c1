"""Shared fixtures: a real PostgreSQL for the whole run, migrated once, emptied per test.

Without DB_HOST the run starts an embedded server (devtools.pgserver); with DB_HOST it uses
that server and creates a fresh database on it for this run (dropped at the end).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest

from devtools.support.database import empty_every_table, migrate_database
from devtools.support.functions import ROOT
from devtools.support.http import free_port


class Database:
    """Where the tests' PostgreSQL is, and admin helpers on it."""

    def __init__(self, host: str, port: int, user: str, password: str | None, admin_db: str) -> None:
        self.host, self.port, self.user, self.password, self.admin_db = host, port, user, password, admin_db

    def connect(self, database: str) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user=self.user, host=self.host, port=self.port, password=self.password, database=database
        )

    def create_database(self, name: str) -> None:
        conn = self.connect(self.admin_db)
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.run(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.connect(self.admin_db)
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def env(self, database: str) -> dict[str, str]:
        env = {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.user,
            "DB_NAME": database,
            "DB_SSLMODE": "disable",
        }
        if self.password:
            env["DB_PASSWORD"] = self.password
        return env


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from AT's defaults: no variable a settings model reads is set (the
    database's DB_* aside), and nothing read before is cached (settings are, per process)."""
    import atcore.execution
    import atcore.executors.settings
    import atcore.idempotency  # noqa: F401 - each registers its settings' variables
    from atcore import env

    for name in (*env.variables(), "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env.reset()
    yield
    env.reset()


@pytest.fixture(scope="session")
def database_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    if os.environ.get("DB_HOST"):
        yield Database(
            host=os.environ["DB_HOST"],
            port=int(os.environ.get("DB_PORT", "5432")),
            user=os.environ.get("DB_USER", "postgres"),
            password=os.environ.get("DB_PASSWORD") or None,
            admin_db=os.environ.get("DB_NAME", "postgres"),
        )
        return
    from devtools.pgserver import EmbeddedPostgres

    # tmpfs when there is one: initdb there takes half the time it takes on disk.
    shm = Path("/dev/shm")
    data_dir = (
        Path(tempfile.mkdtemp(prefix="at-pgdata-", dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("pgdata")
    )
    server = EmbeddedPostgres(data_dir, durable=False)
    server.start()
    try:
        yield Database(server.host, server.port, server.user, None, "postgres")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database(database_server: Database) -> Iterator[str]:
    """A fresh, migrated database for this run; DB_* point at it for the code under test."""
    from atcore import config, db

    name = f"at_test_{uuid.uuid4().hex[:10]}"
    database_server.create_database(name)
    migrate_database(database_server.connect(name))
    saved = {
        key: os.environ.get(key) for key in ("DB_HOST", "DB_PORT", "DB_USER", "DB_NAME", "DB_SSLMODE", "DB_PASSWORD")
    }
    os.environ.update(database_server.env(name))
    config.database_settings.cache_clear()
    db.reset()
    try:
        yield name
    finally:
        db.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        config.database_settings.cache_clear()
        database_server.drop_database(name)


@pytest.fixture
def sql(database_server: Database, database: str) -> Iterator[pg8000.native.Connection]:
    """A direct connection to the test database, emptied before each test."""
    conn = database_server.connect(database)
    empty_every_table(conn)
    try:
        yield conn
    finally:
        conn.close()


# --- the local run, for the end-to-end tests -----------------------------------------------------


class LocalRun(str):
    """The base URL of a running local run; .console is the file its stdout and stderr go to,
    .outbox its AT_OUTBOX_DIR."""

    console: Path
    outbox: Path


@pytest.fixture(scope="module")
def api(database: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalRun]:
    """`python -m devtools.run` (what `make run` starts) as a real process, serving the test
    database with make run's defaults; yields its base URL. One per test module. Its console goes
    to a file (a pipe nobody reads would block it), shown when a test of the module fails."""
    port = free_port()
    folder = tmp_path_factory.mktemp("local-run")
    run = LocalRun(f"http://127.0.0.1:{port}")
    run.console, run.outbox = folder / "console.log", folder / "outbox"
    env = os.environ | {"API_PORT": str(port), "AT_OUTBOX_DIR": str(run.outbox), "AT_RETRY_BASE_SECONDS": "0.05"}
    for name in ("AT_AWS_DELIVERY", "AT_EMAIL_FROM", "POWERTOOLS_LOG_LEVEL"):
        env.pop(name, None)
    with run.console.open("wb") as console:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.run"],
            cwd=ROOT,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def console_tail(lines: int = 60) -> str:
        return "\n".join(run.console.read_text(errors="replace").splitlines()[-lines:])

    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{run}/health", timeout=5) as health:
                if health.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"local run did not start:\n{console_tail()}")
        time.sleep(0.2)
    failed_before = request.session.testsfailed
    yield run
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # Whatever is left of its process group (API servers, engines) must not outlive this module:
    # an engine left running would claim the next tests' tasks.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if request.session.testsfailed > failed_before:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        text = f"--- the local run's console ({run.console}), last lines ---\n{console_tail()}"
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text, file=sys.stderr)
