"""PostgreSQL connections: lazy, pooled per process, re-opened after a broken connection.

In Lambda a process serves one invocation at a time, so the pool holds one connection that
lives as long as the execution environment. The local run calls handlers from many threads,
so the same pool hands each concurrent caller its own connection. Importing this module does
no I/O. Driver errors are translated here, and only here, into atcore.errors.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pg8000.converters
import pg8000.native
from pg8000.exceptions import DatabaseError as DriverDatabaseError
from pg8000.exceptions import InterfaceError

from atcore import snapstart  # noqa: F401  (registers the SnapStart hooks that empty this pool)
from atcore.config import DatabaseSettings, database_settings
from atcore.errors import DatabaseError, DatabaseUnavailable, InvalidRequest
from atcore.observability import logger


def _timestamptz_in(text: str) -> datetime | str:
    """pg8000 parses timestamptz with strptime (a fifth of the engine's CPU per claimed task);
    PostgreSQL's ISO output, e.g. '2026-11-28 05:11:29.5+00', is what fromisoformat reads in C.
    Anything else (infinity, years past 9999) goes to pg8000's own parser."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return pg8000.converters.timestamptz_in(text)


@functools.lru_cache(maxsize=256)
def _parsed(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple]]:
    return pg8000.native.to_statement(sql)


class Connection(pg8000.native.Connection):
    """pg8000's native connection, minus re-parsing the SQL text on every call.

    pg8000 turns `:name` parameters into `$n` with a character-by-character scan in Python on
    each run(); for our longer queries that cost more than the round trip itself. Our SQL texts
    are a fixed set, so the conversion is cached; the statement is still sent unnamed, so
    PostgreSQL plans it with the actual values, exactly as pg8000's run() would.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_in_adapter(pg8000.converters.TIMESTAMPTZ, _timestamptz_in)

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if not params or stream is not None or types is not None:
            return super().run(sql, stream=stream, types=types, **params)
        statement, make_values = _parsed(sql)
        self._context = self.execute_unnamed(statement, make_values(params), oids=())
        return self._context.rows

    def run_dicts(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """run(), each row as {column name: value}: models map rows by name, never by position."""
        rows = self.run(sql, **params)
        names = [column["name"] for column in self.columns or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def looks_broken(self) -> bool:
        """An idle connection has nothing to read; a readable one holds an EOF or the server's
        FATAL goodbye (it was restarted, or killed our backend) and must not be lent out."""
        try:
            readable, _, _ = select.select([self._usock], [], [], 0)
        except (OSError, ValueError):  # closed socket
            return True
        return bool(readable)


_MAX_IDLE_CONNECTIONS = 16
# SQLSTATE classes/codes meaning "the server is (temporarily) not there" rather than a bug.
_UNAVAILABLE_CLASSES = ("08", "28", "53", "57")
_DATA_EXCEPTION_CLASS = "22"
_AUTHORIZATION_CLASS = "28"  # invalid_authorization_specification, invalid_password


class _Pool:
    def __init__(self) -> None:
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def take(self) -> Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return open_connection(database_settings())
            if not conn.looks_broken():
                return conn
            close_quietly(conn)

    def give_back(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        close_quietly(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            close_quietly(conn)


_pool = _Pool()


def _ssl_context(settings: DatabaseSettings) -> ssl.SSLContext | bool:
    if settings.sslmode == "disable":
        return False
    if settings.sslmode == "require":  # encrypted, not verified (libpq's meaning of require)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=settings.sslrootcert)


def open_connection(settings: DatabaseSettings, database: str | None = None) -> Connection:
    """A new connection. The connect timeout bounds the TCP connect and the PostgreSQL handshake
    (a server that accepts but never answers); afterwards a query may take its statement
    timeout plus that margin."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=settings.connect_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # pg8000 writes a statement's messages with several sends; with Nagle's algorithm a large one
        # (a batch of 100 tasks) waited ~40 ms for the server's delayed ACK before its last part went.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(
            user=settings.user,
            host=settings.host,
            port=settings.port,
            database=database or settings.name,
            password=settings.password,
            ssl_context=_ssl_context(settings),
            sock=sock,
            application_name="at",
            startup_params={"TimeZone": "UTC", "statement_timeout": str(settings.statement_timeout_ms)},
        )
        conn._usock.settimeout(settings.connect_timeout + settings.statement_timeout_ms / 1000)  # TLS-wrapped too
        return conn
    except OSError as exc:
        raise DatabaseUnavailable("database is unavailable, try again later") from exc
    except (InterfaceError, DriverDatabaseError) as exc:
        if _sqlstate(exc).startswith(_AUTHORIZATION_CLASS):
            # The password may have been rotated: read the secret again on the next attempt.
            database_settings.cache_clear()
        raise _translate(exc) from exc


def _sqlstate(exc: Exception) -> str:
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(details.get("C", ""))


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, (InterfaceError, OSError)):  # socket closed or timed out, network error, desync
        return DatabaseUnavailable("database connection was lost, try again")
    code = _sqlstate(exc)
    if code.startswith(_UNAVAILABLE_CLASSES):
        return DatabaseUnavailable("database is unavailable, try again later")
    if code.startswith(_DATA_EXCEPTION_CLASS):
        # A value the validators let through but PostgreSQL refuses: still the client's input.
        message = exc.args[0].get("M", "invalid value") if isinstance(exc.args[0], dict) else "invalid value"
        return InvalidRequest(f"value rejected: {message}")
    return DatabaseError("internal database error")


def close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001, S110 - the connection is being thrown away anyway
        pass


@contextmanager
def connection() -> Iterator[Connection]:
    """Lend a connection for one unit of work (each statement commits on its own)."""
    conn = _pool.take()
    try:
        yield conn
    except (InterfaceError, DriverDatabaseError, OSError) as exc:
        translated = _translate(exc)
        if isinstance(translated, DatabaseUnavailable) or isinstance(exc, (InterfaceError, OSError)):
            close_quietly(conn)  # its state is unknown; the next caller gets a fresh one
        else:
            _pool.give_back(conn)
        logger.warning("Database call failed", extra={"sqlstate": _sqlstate(exc), "error_class": type(exc).__name__})
        raise translated from exc
    except BaseException:
        close_quietly(conn)
        raise
    else:
        _pool.give_back(conn)


@contextmanager
def transaction() -> Iterator[Connection]:
    """Lend a connection for one transaction: committed when the block ends, rolled back when it
    raises (the connection is then replaced: after an error its state is not worth guessing)."""
    with connection() as conn:
        conn.run("BEGIN")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.run("ROLLBACK")
            raise
        conn.run("COMMIT")


class NotificationListener:
    """A connection of its own that LISTENs (`listen_sql`) and waits for a notification.

    Only the dispatcher listens: a LISTEN pins its RDS Proxy connection, and it holds just one.
    pg8000 has no blocking wait for notifications; its socket turns readable when one arrives.
    """

    def __init__(self, listen_sql: str) -> None:
        self._listen_sql = listen_sql
        self._conn: Connection | None = None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True when a notification arrived. A lost connection is
        reopened on the next call and meanwhile waited out, so the caller's loop keeps its pace."""
        if timeout <= 0:
            return False
        try:
            conn = self._connection()
            readable, _, _ = select.select([conn._usock], [], [], timeout)
            if readable:
                conn.run("SELECT 1")  # reads the notification (and any others) off the wire
                conn.notifications.clear()
            return bool(readable)
        except (DatabaseUnavailable, OSError, InterfaceError, DriverDatabaseError):
            self.close()
            time.sleep(timeout)
            return False

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = open_connection(database_settings())
            self._conn.run(self._listen_sql)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None


def reset() -> None:
    """Close pooled connections (tests, and after the settings change)."""
    _pool.clear()
