"""Listing at scale: GET /api/v1/tasks through the list_tasks handler over 1,000,000 tasks.

Goal: p95 <= 25 ms at offset 0 with any filter, and `total` exact. Measured on the product as it
is: a database with every migration in db/migrations/ (0002's counts table and its triggers keep
the totals), the layer's list_tasks query, through the function's handler.

*Before*, for comparison and labelled so in the report: how listing worked until migration 0002
(commit 7e90d7f), i.e. a second database on the same server migrated with 0001 only, the same
rows loaded the same way, and the old list_tasks query (BEFORE_SQL below, as of commit 01d9288)
served by the same handler. It counted every matching row, up to 1.5 s a call at 1M tasks, so it
is timed at offset 0 only (the goal's case) with BEFORE_RUNS runs. The same two databases give
what 0002's triggers cost the write paths.

`--quick`: QUICK_ROWS tasks and fewer runs, while developing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pg8000.native

from devtools.bench import common

ROWS = 1_000_000
QUICK_ROWS = 50_000
RUNS = 30
BEFORE_RUNS = 5  # the old query at offset 0 only: up to 1.5 s a call at 1M tasks
LIMIT = 50  # the API's default page size
GOAL_P95_S = 0.025

TASK_TYPES = [
    "send_email", "http_callback", "send_sms", "sqs_message", "email", "invoice_reminder", "report_ready",
    "password_reset", "trial_expiry", "webhook_retry", "daily_digest", "cart_abandoned", "subscription_renewal",
    "order_shipped", "survey_invite", "account_cleanup", "export_ready", "payment_failed", "weekly_summary",
    "birthday_greeting",
]  # fmt: skip

# (status, task_type): none, each alone, both; the largest and the smallest sets.
FILTERS: list[tuple[str | None, str | None]] = [
    (None, None),
    ("pending", None),
    ("completed", None),
    (None, "send_email"),
    ("completed", "send_email"),
    ("pending", "birthday_greeting"),
]

# One statement (after setseed), rows in id order so ids grow with created_at as in real life. Status mix:
# 70% completed, 10% failed, 5% cancelled, 10% pending (due in the future), 5% processing (with a
# lease). task_type: 20 types, index floor(20 * u^2.5), so the first is ~30% and the last ~2%.
# Every CHECK holds: completed_at iff completed/failed, lease iff processing, attempts within
# 0..max_attempts and >= 1 while processing. setseed makes the data the same on every run.
LOAD_SQL = """
SELECT setseed(0.42);
INSERT INTO scheduled_tasks (execute_at, task_type, payload, status, attempts, max_attempts,
                             created_at, updated_at, completed_at, error_message, lease_expires_at)
SELECT CASE r.status WHEN 'pending' THEN now() + interval '1 hour' * (1 + r.v * 720)
                     WHEN 'processing' THEN now() - interval '1 second' * r.v * 60
                     ELSE r.created + interval '1 minute' * (1 + r.v * 60) END,
       r.task_type,
       jsonb_build_object('to', 'user' || r.i || '@example.com', 'subject', 'Reminder #' || r.i,
                          'text', 'Hello from AT'),
       r.status,
       CASE r.status WHEN 'completed' THEN 1 + (r.v < 0.1)::int WHEN 'failed' THEN 3
                     WHEN 'processing' THEN 1 ELSE 0 END,
       3,
       r.created,
       r.created + interval '1 minute',
       CASE WHEN r.status IN ('completed', 'failed') THEN r.created + interval '1 minute' * (2 + r.v * 60) END,
       CASE WHEN r.status = 'failed' THEN 'callback answered 500 Internal Server Error' END,
       CASE WHEN r.status = 'processing' THEN now() + interval '2 minutes' END
FROM (
    SELECT g.i,
           now() - interval '2 seconds' * ({rows} - g.i) AS created,
           random() AS v,
           CASE WHEN g.u < 0.70 THEN 'completed' WHEN g.u < 0.80 THEN 'failed'
                WHEN g.u < 0.85 THEN 'cancelled' WHEN g.u < 0.95 THEN 'pending'
                ELSE 'processing' END AS status,
           (ARRAY[{types}])[1 + floor(20 * power(random(), 2.5))::int] AS task_type
    FROM (SELECT i, random() AS u FROM generate_series(1, {rows}) AS i) AS g
) AS r
ORDER BY r.i
"""


def load_tasks(conn: pg8000.native.Connection, rows: int) -> None:
    """Insert `rows` tasks in the mix above (ids from the next free one on)."""
    conn.run(LOAD_SQL.format(rows=int(rows), types=", ".join(f"'{t}'" for t in TASK_TYPES)))


def offsets(rows: int) -> tuple[int, ...]:
    """The first page, a deep-ish one, and halfway through the table."""
    return (0, 10_000, rows // 2)


# --- before migration 0002 ---------------------------------------------------------------------

BEFORE = "before 0002"
NOW = "now"

# list_tasks as it was before migration 0002 (git show 01d9288:layers/common/python/atcore/sql/tasks.sql):
# the exact total by counting every matching row, in the same statement as the page.
BEFORE_SQL = """
WITH matching AS (
    SELECT id, execute_at, task_type, payload, status, attempts, max_attempts,
           created_at, updated_at, completed_at, error_message
    FROM scheduled_tasks
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
),
page AS (
    SELECT * FROM matching ORDER BY id DESC LIMIT :limit OFFSET :offset
)
SELECT counted.total, page.*
FROM (SELECT count(*) AS total FROM matching) AS counted
LEFT JOIN page ON true
ORDER BY page.id DESC
""".strip()


@contextmanager
def before_database(database: common.BenchDatabase, conn: pg8000.native.Connection) -> Iterator[str]:
    """A second database on the same server with migration 0001 only (its name); dropped afterwards."""
    from migrate import apply_migrations, migration_files

    name = database.name + "_before"
    conn.run(f"CREATE DATABASE {name}")
    try:
        with tempfile.TemporaryDirectory(prefix="at-bench-0001-") as directory:
            first = migration_files()[0]
            assert first.name.startswith("0001_"), first
            shutil.copy(first, directory)
            before = database.connect(name)
            try:
                apply_migrations(before, Path(directory))
            finally:
                before.close()
        yield name
    finally:
        from atcore import db

        db.reset()  # the handler's pooled connection may be on it
        conn.run(f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def list_sql(text: str) -> Iterator[None]:
    """Serve list_tasks with `text` meanwhile (without editing the layer)."""
    from atcore import sql

    queries = sql._all_queries()  # the cached dict every query() call reads
    saved = queries["list_tasks"]
    queries["list_tasks"] = text
    try:
        yield
    finally:
        queries["list_tasks"] = saved


def current_sql() -> str:
    from atcore.sql import query

    return query("list_tasks")


def with_literals(sql: str, params: Mapping[str, object]) -> str:
    """The statement with its :params replaced by SQL literals, for EXPLAIN."""
    return re.sub(r"(?<![:\w]):(\w+)", lambda m: pg8000.native.literal(params[m.group(1)]), sql)


# --- measuring ---------------------------------------------------------------------------------


def describe(status: str | None, task_type: str | None) -> str:
    parts = [f"status={status}"] * bool(status) + [f"task_type={task_type}"] * bool(task_type)
    return " & ".join(parts) or "no filter"


def list_event(status: str | None, task_type: str | None, offset: int) -> dict:
    event = common.load_event("list_tasks")
    query = {"limit": str(LIMIT), "offset": str(offset)}
    if status:
        query["status"] = status
    if task_type:
        query["task_type"] = task_type
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def exact_counts(conn: pg8000.native.Connection) -> dict[tuple[str | None, str | None], int]:
    sql = (
        "SELECT count(*) FROM scheduled_tasks WHERE (CAST(:status AS text) IS NULL OR status = :status)"
        " AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)"
    )
    return {(s, t): conn.run(sql, status=s, task_type=t)[0][0] for s, t in FILTERS}


def time_listing(handler, counts: dict, cases: list[tuple], runs: int) -> dict[tuple, dict]:
    """p50/p95 per (status, task_type, offset), rounds interleaved; checks every answer."""
    import json

    events = {case: list_event(*case) for case in cases}
    samples: dict[tuple, list[float]] = {case: [] for case in cases}
    exact: dict[tuple, bool] = dict.fromkeys(cases, True)
    for case in cases:  # one warm-up each (plans, caches)
        handler(events[case], common.lambda_context())
    for _ in range(runs):
        for case in cases:
            began = time.perf_counter()
            response = handler(events[case], common.lambda_context())
            samples[case].append(time.perf_counter() - began)
            body = json.loads(response["body"])
            total = counts[case[:2]]
            expected_rows = max(0, min(LIMIT, total - case[2]))
            if response["statusCode"] != 200 or body["total"] != total or len(body["tasks"]) != expected_rows:
                exact[case] = False
    return {case: {"p50": common.p50(v), "p95": common.p95(v), "exact": exact[case]} for case, v in samples.items()}


def explain(conn: pg8000.native.Connection, sql: str, status: str | None, task_type: str | None) -> str:
    from atcore.api import PAGE_BUDGET

    params = {
        "status": status,
        "task_type": task_type,
        "before_id": None,
        "limit": LIMIT + 1,
        "offset": 0,
        "max_bytes": PAGE_BUDGET,
    }  # as atcore.repository.list_tasks passes them
    lines = [row[0] for row in conn.run("EXPLAIN (ANALYZE, BUFFERS) " + with_literals(sql, params))]
    return trim_plan("\n".join(lines))


# Plan lines that say little here; cost estimates go too (actual times, rows and buffers stay).
_PLAN_NOISE = re.compile(r"^\s*(Index Searches:|Group Key:|Batches:|Heap Fetches: 0$|Sort Key:)")


def trim_plan(plan: str) -> str:
    kept, in_planning = [], False
    for line in plan.splitlines():
        in_planning = line == "Planning:" or (in_planning and line.startswith(" "))  # and its Buffers line
        if not in_planning and not _PLAN_NOISE.match(line):
            kept.append(re.sub(r"\(cost=[^)]*\) ", "", line))
    return "\n".join(kept)


def time_writes(connections: dict[str, pg8000.native.Connection], runs: int) -> dict[str, dict[str, list[float]]]:
    """Raw SQL of the write paths that fire 0002's triggers: create, cancel, and a 500-task
    claim + outcome batch (dispatcher and worker); the databases take turns."""
    from atcore.sql import query

    operations = ("create", "cancel", "claim 500", "record 500 outcomes")
    samples: dict[str, dict[str, list[float]]] = {name: {op: [] for op in operations} for name in connections}
    for i in range(runs):
        for name, conn in connections.items():
            began = time.perf_counter()
            task_id = conn.run(
                query("create_task"),
                execute_at="2099-01-01T00:00:00Z",
                task_type=TASK_TYPES[i % 20],
                payload='{"to": "a@example.com"}',
                max_attempts=3,
                wake_horizon_seconds=1.0,
            )[0][0]
            samples[name]["create"].append(time.perf_counter() - began)
            began = time.perf_counter()
            conn.run(query("cancel_task"), id=task_id)
            samples[name]["cancel"].append(time.perf_counter() - began)
            if i % 10:
                continue
            conn.run(
                "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
                "SELECT now() - interval '1 second', 'send_email', '{}' FROM generate_series(1, 500)"
            )
            began = time.perf_counter()
            claimed = conn.run(query("claim_due_tasks"), batch_size=500, lease_seconds=120)
            samples[name]["claim 500"].append(time.perf_counter() - began)
            began = time.perf_counter()
            conn.run(
                query("record_outcomes"),
                ids=[r[0] for r in claimed],
                attempts=[r[3] for r in claimed],
                succeeded=[True] * len(claimed),
                errors=[None] * len(claimed),
                retry_in_seconds=[None] * len(claimed),
            )
            samples[name]["record 500 outcomes"].append(time.perf_counter() - began)
    return samples


def load(conn: pg8000.native.Connection, rows: int) -> tuple[float, float]:
    """Load the tasks and VACUUM ANALYZE the database: (load s, vacuum s)."""
    began = time.perf_counter()
    load_tasks(conn, rows)
    loaded = time.perf_counter()
    conn.run("VACUUM ANALYZE")
    return loaded - began, time.perf_counter() - loaded


# --- the run -----------------------------------------------------------------------------------


def run(quick: bool = False) -> str:
    rows, runs = (QUICK_ROWS, 5) if quick else (ROWS, RUNS)
    before_runs = min(runs, BEFORE_RUNS)
    cases = [(s, t, o) for s, t in FILTERS for o in offsets(rows)]
    common.quiet_powertools()
    with common.bench_database() as database:
        conn = database.connect()
        report = Report(facts=common.machine_facts(database.server_version()), where=database.where, rows=rows,
                        runs=runs, before_runs=before_runs)  # fmt: skip
        report.load_s, report.vacuum_s = load(conn, rows)
        report.size = conn.run("SELECT pg_size_pretty(pg_total_relation_size('scheduled_tasks'))")[0][0]
        report.statuses = conn.run("SELECT status, count(*) FROM scheduled_tasks GROUP BY 1 ORDER BY 2 DESC")
        report.types = conn.run("SELECT task_type, count(*) FROM scheduled_tasks GROUP BY 1 ORDER BY 2 DESC")
        report.counts = counts = exact_counts(conn)
        handler = common.load_function("list_tasks").lambda_handler

        report.results[NOW] = time_listing(handler, counts, cases, runs)
        report.plans = {f: explain(conn, current_sql(), *f) for f in FILTERS}
        report.load_during = common.load_average()

        with before_database(database, conn) as name:
            before = database.connect(name)
            try:
                report.before_load_s, _ = load(before, rows)
                before_counts = exact_counts(before)
                assert before_counts == counts, f"not the same rows: {before_counts} != {counts}"
                with common.environment({"DB_NAME": name}), list_sql(BEFORE_SQL):
                    report.results[BEFORE] = time_listing(handler, counts, [c for c in cases if c[2] == 0],
                                                          before_runs)  # fmt: skip
                report.load_during += f" (after {BEFORE}: {common.load_average()})"
                report.writes = time_writes({"0001 only (before 0002)": before, "0001 + 0002 (now)": conn},
                                            20 if quick else 200)  # fmt: skip
            finally:
                before.close()
        counted, actual = conn.run(
            "SELECT (SELECT sum(n) FROM scheduled_task_counts), (SELECT count(*) FROM scheduled_tasks)"
        )[0]
        assert counted == actual, f"the counts table says {counted}, count(*) says {actual}"
        conn.close()
    return report.markdown()


@dataclass
class Report:
    facts: str
    where: str
    rows: int
    runs: int
    before_runs: int
    load_s: float = 0.0
    vacuum_s: float = 0.0
    before_load_s: float = 0.0
    size: str = ""
    load_during: str = ""
    statuses: list = field(default_factory=list)
    types: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    results: dict[str, dict[tuple, dict]] = field(default_factory=dict)  # NOW / BEFORE -> case -> figures
    plans: dict[tuple, str] = field(default_factory=dict)  # filter -> plan of the current query
    writes: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # schema -> operation -> samples

    def markdown(self) -> str:
        ms = common.ms
        (top_type, top_n), (last_type, last_n) = self.types[0], self.types[-1]
        lines = [
            "## Listing at scale",
            "",
            self.facts,
            "",
            f"PostgreSQL: {self.where}, migrated with every file in db/migrations/ (0002 keeps "
            f"`scheduled_task_counts` by triggers). {self.rows:,} tasks loaded by one "
            f"`INSERT … SELECT … FROM generate_series` in {self.load_s:.1f} s (triggers on; into a database "
            f"with 0001 only: {self.before_load_s:.1f} s), then `VACUUM ANALYZE` in {self.vacuum_s:.1f} s; "
            f"table + indexes {self.size}. Statuses: "
            + ", ".join(f"{s} {100 * n / self.rows:.0f}%" for s, n in self.statuses)
            + f"; {len(self.types)} "
            f"task types, skewed ({top_type} {100 * top_n / self.rows:.0f}% … {last_type} "
            f"{100 * last_n / self.rows:.0f}%).",
            "",
            f"Each case is `GET /api/v1/tasks?limit={LIMIT}&offset=…` through the list_tasks `lambda_handler` "
            "(warm, its one pooled connection) with the layer's `list_tasks` query, all cases interleaved in "
            f"rounds, {self.runs} runs each. *exact*: on every run `total` equalled `count(*)` and the page had "
            "the expected number of rows. POWERTOOLS_LOG_LEVEL=WARNING, POWERTOOLS_METRICS_DISABLED=true.",
            "",
            f"*{BEFORE}*, for comparison: the same handler and rows on a second database with migration 0001 "
            "only, serving the list query as it was before 0002 (commit 01d9288: a CTE of the matching rows, "
            f"counted and paged in one statement); offset 0 only, {self.before_runs} runs each.",
            "",
            f"**Goal: p95 ≤ {GOAL_P95_S * 1000:.0f} ms at offset 0 with any filter, `total` exact.** "
            f"Load average after the runs: {self.load_during}.",
            "",
        ]
        now, before = self.results[NOW], self.results.get(BEFORE, {})
        headers = ["filter", "offset", "total", "p50 ms", "p95 ms", "exact", f"{BEFORE}: p50 ms", "p95 ms"]
        rows = []
        for (status, task_type, offset), case in now.items():
            row = [
                describe(status, task_type),
                f"{offset:,}",
                f"{self.counts[(status, task_type)]:,}",
                ms(case["p50"]),
                ms(case["p95"]) + self._flag(offset, case),
                "yes" if case["exact"] else "**no**",
            ]
            if old := before.get((status, task_type, offset)):
                row += [ms(old["p50"]), ms(old["p95"]) + self._flag(offset, old) + ("" if old["exact"] else " inexact")]
            else:
                row += ["", ""]
            rows.append(row)
        lines += [common.table(headers, rows), "", "✗: misses the goal (which is for offset 0 only)."]
        if self.writes:
            lines += [
                "",
                "What 0002's triggers cost the write paths (raw SQL on the same data, the two databases "
                "taking turns; p50 / p95 ms):",
                "",
            ]
            operations = list(next(iter(self.writes.values())))
            lines.append(
                common.table(
                    ["operation", *self.writes],
                    [
                        [op, *(f"{ms(common.p50(w[op]))} / {ms(common.p95(w[op]))}" for w in self.writes.values())]
                        for op in operations
                    ],
                )
            )
        lines += [
            "",
            "### Plans",
            "",
            "`EXPLAIN (ANALYZE, BUFFERS)` of the current list query at offset 0, with "
            "literal values (cost estimates trimmed).",
            "",
        ]
        for (status, task_type), plan in self.plans.items():
            lines += [
                f"<details><summary>{describe(status, task_type)}</summary>",
                "",
                "```",
                plan,
                "```",
                "",
                "</details>",
                "",
            ]
        return "\n".join(lines)

    @staticmethod
    def _flag(offset: int, case: dict) -> str:
        return " ✗" if offset == 0 and case["p95"] > GOAL_P95_S else ""
