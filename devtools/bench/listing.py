"""Listing at scale: GET /api/v1/tasks through the list_tasks handler over 1,000,000 tasks.

Goal: p95 <= 25 ms for the first page and a cursor page with any filter (status, task_type, due
time), and `total` exact. Measured on the product as it is: a database with every migration in
db/migrations/ (0002's and 0012's counts tables and their triggers keep the totals), the layer's
list_tasks query, through the function's handler. What the counting triggers cost the write paths
is measured on the same table with them disabled and enabled in turns.

(Until migration 0002 the total was counted row by row: up to 1.5 s a call at 1M tasks; that
comparison, against a 0001-only database, was dropped when the current query stopped running on
the 0001 schema.)

`--quick`: QUICK_ROWS tasks and fewer runs, while developing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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

# Due-time windows, in hours from the time the rows were loaded: [after, before), None = open.
# The data's execute_at runs from ~23 days ago (old, finished tasks, low ids) to 30 days ahead.
DUE_WINDOWS: dict[str, tuple[float | None, float | None]] = {
    "due next hour": (1, 2),  # narrow, pending only
    "due next 7 days": (0, 7 * 24),
    "one past day": (-10 * 24, -9 * 24),  # old ids only
    "a past week": (-14 * 24, -7 * 24),
    "due after 20 days ago": (-20 * 24, None),  # wide and open
    "due before 15 days ago": (None, -15 * 24),  # open, and only the oldest ids match
}


@dataclass(frozen=True)
class Filter:
    status: str | None = None
    task_type: str | None = None
    due: str | None = None  # a key of DUE_WINDOWS


# none, each alone, both; the largest and the smallest sets; then the due-time windows.
FILTERS: list[Filter] = [
    Filter(),
    Filter("pending"),
    Filter("completed"),
    Filter(None, "send_email"),
    Filter("completed", "send_email"),
    Filter("pending", "birthday_greeting"),
    *(Filter(due=window) for window in DUE_WINDOWS),
    Filter("completed", None, "a past week"),
    Filter("pending", "birthday_greeting", "due next 7 days"),
    Filter(None, "send_email", "due before 15 days ago"),
]
CURSOR = -1  # the "offset" of a case that asks for a cursor page from the middle of its set

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
    """The first page, a deep-ish one, halfway through the table, and a cursor page."""
    return (0, 10_000, rows // 2, CURSOR)


def due_bounds(window: str | None, loaded_at: datetime) -> tuple[datetime | None, datetime | None]:
    after, before = DUE_WINDOWS[window] if window else (None, None)
    return tuple(None if h is None else loaded_at + timedelta(hours=h) for h in (after, before))  # type: ignore[return-value]


NOW = "now"


def current_sql() -> str:
    from atcore.sql import query

    return query("list_tasks")


def with_literals(sql: str, params: Mapping[str, object]) -> str:
    """The statement with its :params replaced by SQL literals, for EXPLAIN."""
    return re.sub(r"(?<![:\w]):(\w+)", lambda m: pg8000.native.literal(params[m.group(1)]), sql)


# --- measuring ---------------------------------------------------------------------------------


def describe(f: Filter) -> str:
    parts = [f"status={f.status}"] * bool(f.status) + [f"task_type={f.task_type}"] * bool(f.task_type)
    return " & ".join(parts + ([f.due] if f.due else [])) or "no filter"


def stamp(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def list_filters(f: Filter, loaded_at: datetime):
    from atcore.models import ListFilters

    after, before = due_bounds(f.due, loaded_at)
    return ListFilters(status=f.status, task_type=f.task_type, execute_after=after, execute_before=before)


MATCHING_SQL = """
FROM scheduled_tasks WHERE (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
  AND (CAST(:after AS timestamptz) IS NULL OR execute_at >= :after)
  AND (CAST(:before AS timestamptz) IS NULL OR execute_at < :before)
"""


def matching_params(f: Filter, loaded_at: datetime) -> dict:
    after, before = due_bounds(f.due, loaded_at)
    return {"status": f.status, "task_type": f.task_type, "after": stamp(after), "before": stamp(before)}


def list_event(conn: pg8000.native.Connection, f: Filter, offset: int, loaded_at: datetime, total: int) -> dict:
    """The GET of the case; a CURSOR case carries the cursor of the page that starts halfway."""
    from atcore.models import make_cursor

    event = common.load_event("list_tasks")
    after, before = due_bounds(f.due, loaded_at)
    query = {"limit": str(LIMIT)}
    if offset == CURSOR:
        middle = conn.run(
            "SELECT id " + MATCHING_SQL + " ORDER BY id DESC LIMIT 1 OFFSET :half",
            half=total // 2,
            **matching_params(f, loaded_at),
        )
        query["cursor"] = make_cursor(list_filters(f, loaded_at), middle[0][0] + 1 if middle else 1)
    else:
        query["offset"] = str(offset)
    given = {
        "status": f.status,
        "task_type": f.task_type,
        "execute_after": stamp(after),
        "execute_before": stamp(before),
    }
    query |= {k: v for k, v in given.items() if v}
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def exact_counts(conn: pg8000.native.Connection, loaded_at: datetime, filters: list[Filter]) -> dict[Filter, int]:
    return {f: conn.run("SELECT count(*) " + MATCHING_SQL, **matching_params(f, loaded_at))[0][0] for f in filters}


def expected_rows(total: int, offset: int) -> int:
    return min(LIMIT, total - total // 2) if offset == CURSOR else max(0, min(LIMIT, total - offset))


def time_listing(
    handler, conn: pg8000.native.Connection, counts: dict, cases: list[tuple], runs: int, loaded_at: datetime
) -> dict[tuple, dict]:
    """p50/p95 per (filter, offset), rounds interleaved; checks every answer."""
    import json

    events = {case: list_event(conn, case[0], case[1], loaded_at, counts[case[0]]) for case in cases}
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
            total = counts[case[0]]
            if (
                response["statusCode"] != 200
                or body["total"] != total
                or len(body["tasks"]) != expected_rows(total, case[1])
            ):
                exact[case] = False
    return {case: {"p50": common.p50(v), "p95": common.p95(v), "exact": exact[case]} for case, v in samples.items()}


def explain(conn: pg8000.native.Connection, sql: str, f: Filter, loaded_at: datetime) -> str:
    from atcore.api import PAGE_BUDGET
    from atcore.repository import SCAN_BY_ID_MAX

    after, before = due_bounds(f.due, loaded_at)
    params = {
        "status": f.status,
        "task_type": f.task_type,
        "execute_after": stamp(after),
        "execute_before": stamp(before),
        "by_due_day": bool(after or before),
        "before_id": None,
        "limit": LIMIT + 1,
        "offset": 0,
        "max_bytes": PAGE_BUDGET,
        "scan_by_id_max": SCAN_BY_ID_MAX,
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


COUNTING_TRIGGERS = {
    "0002": ["scheduled_task_counts_insert", "scheduled_task_counts_update", "scheduled_task_counts_delete"],
    "0012": [
        "scheduled_task_due_day_counts_insert",
        "scheduled_task_due_day_counts_update",
        "scheduled_task_due_day_counts_delete",
    ],
}
WRITE_SETUPS = {  # name: the migrations whose counting triggers stay enabled
    "no counting triggers": (),
    "0002 only (before 0012)": ("0002",),
    "0002 + 0012 (now)": ("0002", "0012"),
}


def enable_counting(conn: pg8000.native.Connection, migrations: tuple[str, ...]) -> None:
    for migration, triggers in COUNTING_TRIGGERS.items():
        for trigger in triggers:
            action = "ENABLE" if migration in migrations else "DISABLE"
            conn.run(f"ALTER TABLE scheduled_tasks {action} TRIGGER {trigger}")


def time_writes(conn: pg8000.native.Connection, runs: int) -> dict[str, dict[str, list[float]]]:
    """Raw SQL of the write paths that fire the counting triggers: create, cancel, and a 500-task
    claim + outcome batch (dispatcher and worker), on the loaded table, with each setup of
    WRITE_SETUPS taking turns. The counts are wrong afterwards: run it last."""
    from atcore.models import CANCELLABLE_STATUSES
    from atcore.sql import query

    operations = ("create", "cancel", "claim 500", "record 500 outcomes")
    samples: dict[str, dict[str, list[float]]] = {name: {op: [] for op in operations} for name in WRITE_SETUPS}
    try:
        for i in range(runs):
            for name, migrations in WRITE_SETUPS.items():
                enable_counting(conn, migrations)
                began = time.perf_counter()
                task_id = conn.run(
                    query("create_task"),
                    execute_at="2099-01-01T00:00:00Z",
                    task_type=TASK_TYPES[i % 20],
                    payload='{"to": "a@example.com"}',
                    max_attempts=3,
                    created_by=None,
                )[0][0]
                samples[name]["create"].append(time.perf_counter() - began)
                began = time.perf_counter()
                conn.run(query("cancel_task"), id=task_id, cancellable=sorted(CANCELLABLE_STATUSES))
                samples[name]["cancel"].append(time.perf_counter() - began)
                if i % 10:
                    continue
                common.insert_due(conn, 500)
                began = time.perf_counter()
                claimed = common.claim_due(conn, 500)
                samples[name]["claim 500"].append(time.perf_counter() - began)
                began = time.perf_counter()
                common.record_successes(conn, claimed)
                samples[name]["record 500 outcomes"].append(time.perf_counter() - began)
    finally:
        enable_counting(conn, ("0002", "0012"))
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
    cases = [(f, o) for f in FILTERS for o in offsets(rows)]
    common.quiet_powertools()
    with common.bench_database() as database:
        conn = database.connect()
        report = Report(facts=common.machine_facts(database.server_version()), where=database.where, rows=rows,
                        runs=runs)  # fmt: skip
        loaded_at = conn.run("SELECT now()")[0][0]  # the time the data's execute_at were written around
        report.load_s, report.vacuum_s = load(conn, rows)
        report.size = conn.run("SELECT pg_size_pretty(pg_total_relation_size('scheduled_tasks'))")[0][0]
        report.statuses = conn.run("SELECT status, count(*) FROM scheduled_tasks GROUP BY 1 ORDER BY 2 DESC")
        report.types = conn.run("SELECT task_type, count(*) FROM scheduled_tasks GROUP BY 1 ORDER BY 2 DESC")
        report.counts = counts = exact_counts(conn, loaded_at, FILTERS)
        report.day_rows = conn.run("SELECT count(*) FROM scheduled_task_due_day_counts")[0][0]
        handler = common.load_function("list_tasks").lambda_handler

        report.results[NOW] = time_listing(handler, conn, counts, cases, runs, loaded_at)
        report.plans = {f: explain(conn, current_sql(), f, loaded_at) for f in FILTERS}
        report.load_during = common.load_average()
        common.assert_counts_exact(conn)
        report.writes = time_writes(conn, 20 if quick else 200)  # last: it leaves the counts wrong
        conn.close()
    return report.markdown()


@dataclass
class Report:
    facts: str
    where: str
    rows: int
    runs: int
    load_s: float = 0.0
    vacuum_s: float = 0.0
    day_rows: int = 0
    size: str = ""
    load_during: str = ""
    statuses: list = field(default_factory=list)
    types: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    results: dict[str, dict[tuple, dict]] = field(default_factory=dict)  # NOW / BEFORE -> case -> figures
    plans: dict[Filter, str] = field(default_factory=dict)  # filter -> plan of the current query
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
            "`scheduled_task_counts`, 0012 `scheduled_task_due_day_counts`, by triggers). "
            f"{self.rows:,} tasks loaded by one `INSERT … SELECT … FROM generate_series` in {self.load_s:.1f} s "
            f"(triggers on), then `VACUUM ANALYZE` in {self.vacuum_s:.1f} s; table + indexes {self.size}; "
            f"{self.day_rows:,} rows of due-day counts. execute_at runs from ~23 days before the load to "
            "30 days after it (finished tasks in the past, pending ones ahead). Statuses: "
            + ", ".join(f"{s} {100 * n / self.rows:.0f}%" for s, n in self.statuses)
            + f"; {len(self.types)} "
            f"task types, skewed ({top_type} {100 * top_n / self.rows:.0f}% … {last_type} "
            f"{100 * last_n / self.rows:.0f}%).",
            "",
            f"Each case is `GET /api/v1/tasks?limit={LIMIT}&offset=…` (or `&cursor=…` of the page that starts "
            "halfway through the matching tasks) through the list_tasks `lambda_handler` "
            "(warm, its one pooled connection) with the layer's `list_tasks` query, all cases interleaved in "
            f"rounds, {self.runs} runs each. *exact*: on every run `total` equalled `count(*)` and the page had "
            "the expected number of rows. POWERTOOLS_LOG_LEVEL=WARNING, POWERTOOLS_METRICS_DISABLED=true.",
            "",
            "Due-time windows are hours from the load: "
            + "; ".join(f"*{name}* [{a}, {b})" for name, (a, b) in DUE_WINDOWS.items())
            + " (None: open).",
            "",
            f"**Goal: p95 ≤ {GOAL_P95_S * 1000:.0f} ms at offset 0 and for a cursor page, with any filter; "
            "`total` exact.** "
            f"Load average after the runs: {self.load_during}.",
            "",
        ]
        now = self.results[NOW]
        headers = ["filter", "offset", "total", "p50 ms", "p95 ms", "exact"]
        rows = []
        for (f, offset), case in now.items():
            row = [
                describe(f),
                "cursor, halfway" if offset == CURSOR else f"{offset:,}",
                f"{self.counts[f]:,}",
                ms(case["p50"]),
                ms(case["p95"]) + self._flag(offset, case),
                "yes" if case["exact"] else "**no**",
            ]
            rows.append(row)
        lines += [
            common.table(headers, rows),
            "",
            "✗: misses the goal (which is for offset 0 and cursor pages; deep offsets are shown for comparison).",
        ]
        if self.writes:
            lines += [
                "",
                "What the counting triggers cost the write paths (raw SQL on the loaded table, the "
                "setups taking turns by disabling triggers; p50 / p95 ms):",
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
        for f, plan in self.plans.items():
            lines += [
                f"<details><summary>{describe(f)}</summary>",
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
        return " ✗" if offset in (0, CURSOR) and case["p95"] > GOAL_P95_S else ""
