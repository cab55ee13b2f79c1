"""Plumbing shared by the benchmarks: a database, percentiles, machine facts, the docs section.

Each benchmark gets its own PostgreSQL: an embedded server (durable=True, i.e. fsync and
synchronous commit on, as a real server runs) in a temporary data directory on disk, removed
afterwards; or, when DB_HOST is set, a fresh database on that server, dropped afterwards.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg8000.native

from devtools.lambda_env import LambdaContext
from devtools.support.functions import lambda_context as _lambda_context
from devtools.support.functions import load_event, load_function  # noqa: F401 - the benchmarks' too
from devtools.support.template import api_function_folders

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common" / "python"
FUNCTIONS_DIR = ROOT / "functions"
EVENTS_DIR = ROOT / "events"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
API_FUNCTIONS = tuple(api_function_folders())  # from template.yaml


# --- statistics --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), linearly interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p50(values: list[float]) -> float:
    return percentile(values, 50)


def p95(values: list[float]) -> float:
    return percentile(values, 95)


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell."""
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


class Stopwatch:
    """`with watch: ...` appends the elapsed seconds to watch.samples."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def __enter__(self) -> Stopwatch:
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.samples.append(time.perf_counter() - self._began)


# --- the machine -------------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_facts(server_version: str | None) -> str:
    """One markdown paragraph: when, on what, and how busy the machine was at the start."""
    postgres = f"PostgreSQL {server_version}" if server_version else "no database"
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({_cpu_model()}), "
        f"{_ram()} RAM, Python {platform.python_version()}, {postgres}; code at {_code_version()}. "
        f"Load average at start: {load_average()}."
    )


def _code_version() -> str:
    """The commit, and whether the work tree had changes (read-only git commands)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


# --- the database ------------------------------------------------------------------------------


@dataclass
class BenchDatabase:
    host: str
    port: int
    user: str
    password: str | None
    name: str
    where: str  # how the server was provided, for the report

    def connect(self, database: str | None = None) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user=self.user, host=self.host, port=self.port, password=self.password, database=database or self.name
        )

    def server_version(self) -> str:
        conn = self.connect()
        try:
            return str(conn.run("SHOW server_version")[0][0])
        finally:
            conn.close()

    def env(self) -> dict[str, str]:
        env = {"DB_HOST": self.host, "DB_PORT": str(self.port), "DB_USER": self.user,
               "DB_NAME": self.name, "DB_SSLMODE": "disable"}  # fmt: skip
        if self.password:
            env["DB_PASSWORD"] = self.password
        return env


@contextmanager
def _server() -> Iterator[tuple[str, int, str, str | None, str, str]]:
    """(host, port, user, password, admin database, description) of a server to use."""
    if os.environ.get("DB_HOST"):
        yield (
            os.environ["DB_HOST"],
            int(os.environ.get("DB_PORT", "5432")),
            os.environ.get("DB_USER", "postgres"),
            os.environ.get("DB_PASSWORD") or None,
            "postgres",
            f"the server at DB_HOST={os.environ['DB_HOST']}",
        )
        return
    from devtools.pgserver import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="at-bench-pgdata-"))  # on disk, not tmpfs
    server = EmbeddedPostgres(data_dir, durable=True)
    try:
        server.start()
        yield server.host, server.port, server.user, None, "postgres", "an embedded server (durable=True, data on disk)"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A fresh, migrated database; DB_* point at it (and atcore's pool is reset) meanwhile."""
    from migrate import apply_migrations

    with _server() as (host, port, user, password, admin_db, where):
        database = BenchDatabase(host, port, user, password, f"at_bench_{uuid.uuid4().hex[:8]}", where)
        admin = database.connect(admin_db)
        try:
            admin.run(f"CREATE DATABASE {pg8000.native.identifier(database.name)}")
            conn = database.connect()
            try:
                apply_migrations(conn)
            finally:
                conn.close()
            with environment(database.env()):
                yield database
        finally:
            _reset_atcore()
            admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(database.name)} WITH (FORCE)")
            admin.close()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables meanwhile; atcore re-reads its settings on the way in and out."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    _reset_atcore()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_atcore()


def _reset_atcore() -> None:
    if "atcore.db" in sys.modules:
        from atcore import config, db

        config.database_settings.cache_clear()
        db.reset()


# --- the engine's write paths, as raw SQL (what the count triggers and indexes cost) -----------


def assert_counts_exact(conn: pg8000.native.Connection) -> None:
    """Both counts tables (0002 by status and type, 0012 by due day) agree with count(*)."""
    counted, by_day, actual = conn.run(
        "SELECT (SELECT sum(n) FROM scheduled_task_counts), (SELECT sum(n) FROM scheduled_task_due_day_counts), "
        "(SELECT count(*) FROM scheduled_tasks)"
    )[0]
    assert counted == by_day == actual, f"the counts tables say {counted} and {by_day}, count(*) says {actual}"


def insert_due(conn: pg8000.native.Connection, count: int) -> None:
    """`count` tasks due a second ago, for a claim to take."""
    conn.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT now() - interval '1 second', 'send_email', '{}' FROM generate_series(1, :count)",
        count=count,
    )


def claim_due(conn: pg8000.native.Connection, batch_size: int) -> list[dict[str, Any]]:
    """The local engine's claim (claim_due_tasks): the started attempts, by column name."""
    from atcore.sql import query

    rows = conn.run(query("claim_due_tasks"), batch_size=batch_size, lease_seconds=120)
    columns = [column["name"] for column in conn.columns]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def record_successes(conn: pg8000.native.Connection, claimed: list[dict[str, Any]]) -> None:
    """record_outcomes for attempts claim_due started: every one succeeded."""
    from atcore.sql import query

    conn.run(
        query("record_outcomes"),
        ids=[r["id"] for r in claimed],
        attempts=[r["attempt"] for r in claimed],
        succeeded=[True] * len(claimed),
        errors=[None] * len(claimed),
        retry_in_seconds=[None] * len(claimed),
    )


# --- the functions, as Lambda calls them -------------------------------------------------------

# Set before a function is imported (Powertools reads them then): INFO lines per request and the
# metrics flush would otherwise be timed too. Tracing is off outside Lambda anyway.
QUIET_POWERTOOLS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


def quiet_powertools() -> None:
    os.environ.update(QUIET_POWERTOOLS)
    warnings.filterwarnings("ignore", "No application metrics to publish")  # metrics are disabled


def lambda_context() -> LambdaContext:
    """An API function's invocation context (10 s timeout)."""
    return _lambda_context(timeout_seconds=10.0, function_name="at-bench")


# --- docs/BENCHMARKS.md ------------------------------------------------------------------------

_HEADER = """# Benchmarks

Figures from `make bench` (`python -m devtools.bench [NAME ...]`); each section is rewritten by its
benchmark, with the machine and its load at the time. Benchmarks are not tests: they measure, and
say against which goal.
"""


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between the markers of `name` in docs/BENCHMARKS.md."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else _HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text, encoding="utf-8")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
