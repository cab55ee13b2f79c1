"""Retention at scale: do 10,000,000 finished tasks slow creates and claims, and does deleting them?

Goal (issue 10): with 10,000,000 finished tasks in the table, claim latency and create latency
within 10% of an empty table; retention deletes them in small batches without slowing either.

Two databases on one server, both migrated with every file in db/migrations/: *empty*, and *full*
with FULL_ROWS finished tasks (completed, failed, cancelled; one attempt row each; updated_at
spread over the last 60 days, so with AT_RETENTION_DAYS=30 about half are past retention). The
write paths are the layer's named queries as the engine runs them (create_task; claim_due_tasks,
the local engine's claim; hand_over_due_tasks, the AWS dispatcher's; record_outcomes), with the
two databases taking turns so the machine's noise falls on both alike. Then the same turns again
while a thread deletes on *full* as the housekeeping does (delete_expired_tasks, a batch of
HOUSEKEEPING_BATCH_SIZE a second).

`--quick`: QUICK_ROWS finished tasks, fewer runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pg8000.native

from devtools.bench import common

FULL_ROWS = 10_000_000
QUICK_ROWS = 200_000
CHUNK = 1_000_000  # rows per INSERT while loading
RUNS = 1000  # p95 of 1000 is the 50th slowest: steady from run to run
QUICK_RUNS = 40
CLAIM_BATCH = 100
GOAL = 0.10  # within 10%
RETENTION_DAYS = 30

LOAD_SQL = """
WITH made AS (
    INSERT INTO scheduled_tasks (execute_at, task_type, payload, status, attempts, max_attempts,
                                 created_at, updated_at, completed_at, error_message)
    SELECT r.finished - interval '1 minute', 'type_' || (r.i % 20),
           jsonb_build_object('to', 'user' || r.i || '@example.com', 'subject', 'Reminder #' || r.i),
           r.status, CASE WHEN r.status = 'cancelled' THEN 0 ELSE 1 END, 3,
           r.finished - interval '2 minutes', r.finished,
           CASE WHEN r.status <> 'cancelled' THEN r.finished END,
           CASE WHEN r.status = 'failed' THEN 'callback answered 500 Internal Server Error' END
    FROM (
        SELECT g.i,
               -- oldest first, as they were made: ids grow with time
               now() - interval '60 days' + interval '60 days' * (g.i - 1) / CAST(:total AS float8) AS finished,
               CASE WHEN g.i % 20 < 17 THEN 'completed' WHEN g.i % 20 < 19 THEN 'failed' ELSE 'cancelled' END
                   AS status
        FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g(i)
    ) AS r
    RETURNING id, status, updated_at
)
INSERT INTO task_attempts (task_id, number, started_at, finished_at, outcome, error)
SELECT id, 1, updated_at - interval '1 second', updated_at,
       CASE WHEN status = 'completed' THEN 'succeeded' ELSE 'failed' END,
       CASE WHEN status = 'failed' THEN 'callback answered 500 Internal Server Error' END
FROM made WHERE status <> 'cancelled'
"""


@contextmanager
def second_database(database: common.BenchDatabase, suffix: str) -> Iterator[str]:
    """Another migrated database on the bench server (its name); dropped afterwards."""
    from migrate import apply_migrations

    name = f"{database.name}_{suffix}"
    admin = database.connect("postgres")
    admin.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
    try:
        conn = database.connect(name)
        try:
            apply_migrations(conn)
        finally:
            conn.close()
        yield name
    finally:
        admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
        admin.close()


def load_finished(conn: pg8000.native.Connection, rows: int) -> float:
    """Insert `rows` finished tasks (and their attempts) in chunks, then VACUUM ANALYZE; seconds."""
    began = time.perf_counter()
    for first in range(1, rows + 1, CHUNK):
        conn.run(LOAD_SQL, first=first, last=min(rows, first + CHUNK - 1), total=rows)  # ids from 1, as loaded
    conn.run("VACUUM ANALYZE")
    return time.perf_counter() - began


OPERATIONS = ("create", f"claim {CLAIM_BATCH} (local engine)", f"hand over {CLAIM_BATCH} (AWS)", "record outcomes")


def one_round(conn: pg8000.native.Connection, i: int, samples: dict[str, list[float]]) -> None:
    """One create, and a claim, a hand-over and outcomes of CLAIM_BATCH due tasks; timed."""
    from atcore.sql import query

    began = time.perf_counter()
    conn.run(
        query("create_task"),
        execute_at="2099-01-01T00:00:00Z",
        task_type=f"type_{i % 20}",
        payload='{"to": "a@example.com"}',
        max_attempts=3,
        created_by=None,
    )
    samples["create"].append(time.perf_counter() - began)
    claim, hand_over, record = OPERATIONS[1:]
    common.insert_due(conn, CLAIM_BATCH)
    began = time.perf_counter()
    claimed = common.claim_due(conn, CLAIM_BATCH)
    samples[claim].append(time.perf_counter() - began)
    began = time.perf_counter()
    common.record_successes(conn, claimed)
    samples[record].append(time.perf_counter() - began)

    common.insert_due(conn, CLAIM_BATCH)
    began = time.perf_counter()
    conn.run(query("hand_over_due_tasks"), batch_size=CLAIM_BATCH, handoff_seconds=60)
    samples[hand_over].append(time.perf_counter() - began)
    # The handed-over ones leave the due set, as their messages would start them.
    conn.run("UPDATE scheduled_tasks SET status = 'cancelled', queued_until = NULL WHERE queued_until IS NOT NULL")


def take_turns(connections: dict[str, pg8000.native.Connection], runs: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {name: {op: [] for op in OPERATIONS} for name in connections}
    turns = list(connections.items())
    for i in range(runs):
        # Who goes first alternates: caches and CPU clocks favour neither database.
        for name, conn in turns if i % 2 == 0 else reversed(turns):
            one_round(conn, i, samples[name])
    return samples


@dataclass
class Deleter:
    """The housekeeping's retention: a batch a second on its own connection, until stopped."""

    conn: pg8000.native.Connection
    stop: threading.Event = field(default_factory=threading.Event)
    batches: list[float] = field(default_factory=list)  # seconds per batch
    deleted: int = 0

    def run(self) -> None:
        from atcore.execution import HOUSEKEEPING_BATCH_SIZE
        from atcore.sql import query

        while not self.stop.is_set():
            began = time.perf_counter()
            rows = self.conn.run(
                query("delete_expired_tasks"), retention_days=RETENTION_DAYS, batch_size=HOUSEKEEPING_BATCH_SIZE
            )
            self.batches.append(time.perf_counter() - began)
            self.deleted += len(rows)
            self.stop.wait(max(0.0, 1.0 - (time.perf_counter() - began)))


def run(quick: bool = False) -> str:
    rows, runs = (QUICK_ROWS, QUICK_RUNS) if quick else (FULL_ROWS, RUNS)
    with common.bench_database() as database, second_database(database, "full") as full_name:
        empty, full = database.connect(), database.connect(full_name)
        report = Report(common.machine_facts(database.server_version()), database.where, rows, runs)
        report.load_s = load_finished(full, rows)
        report.size = full.run("SELECT pg_size_pretty(pg_database_size(current_database()))")[0][0]
        connections = {"empty": empty, f"{rows:,} finished": full}
        take_turns(connections, max(5, runs // 10))  # warm-up: plans, caches
        report.still = take_turns(connections, runs)
        deleter = Deleter(database.connect(full_name))
        thread = threading.Thread(target=deleter.run, daemon=True)
        thread.start()
        try:
            report.deleting = take_turns(connections, runs)
        finally:
            deleter.stop.set()
            thread.join()
            deleter.conn.close()
        report.deleter = deleter
        report.left = full.run(
            "SELECT count(*) FROM scheduled_tasks WHERE status IN ('completed', 'failed', 'cancelled')"
        )[0][0]
        common.assert_counts_exact(full)  # retention kept both counts tables right
        report.load_during = common.load_average()
        empty.close()
        full.close()
    return report.markdown()


@dataclass
class Report:
    facts: str
    where: str
    rows: int
    runs: int
    load_s: float = 0.0
    size: str = ""
    load_during: str = ""
    still: dict = field(default_factory=dict)
    deleting: dict = field(default_factory=dict)
    deleter: Deleter | None = None
    left: int = 0

    def markdown(self) -> str:
        ms = common.ms
        names = list(self.still)
        lines = [
            "## Retention at scale",
            "",
            self.facts,
            "",
            f"PostgreSQL: {self.where}. Two databases on it, both with every migration: *empty*, and one "
            f"with {self.rows:,} finished tasks (85% completed, 10% failed, 5% cancelled, one attempt row "
            f"each but the cancelled; updated_at spread over the last 60 days), loaded in {self.load_s:.0f} s "
            f"(VACUUM ANALYZE included); that database is {self.size}.",
            "",
            f"Each round: one `create_task`; {CLAIM_BATCH} due tasks claimed by `claim_due_tasks` (the local "
            f"engine) and their outcomes written by `record_outcomes`; {CLAIM_BATCH} more handed over by "
            "`hand_over_due_tasks` (the AWS dispatcher). The two databases take turns, who goes first alternating, "
            f"{self.runs} rounds each, after a warm-up. Raw SQL on one connection each, as the engine runs it.",
            "",
            f"**Goal: with {self.rows:,} finished tasks, claim and create latency within "
            f"{GOAL:.0%} of the empty table, also while retention deletes.** Load average after the runs: "
            f"{self.load_during}.",
            "",
        ]
        headers = [
            "operation",
            "phase",
            f"{names[0]} p50 / p95 ms",
            f"{names[1]} p50 / p95 ms",
            "p50 ratio",
            "p95 ratio",
        ]
        rows = []
        for phase, samples in (("still", self.still), ("while deleting", self.deleting)):
            for op in OPERATIONS:
                a, b = samples[names[0]][op], samples[names[1]][op]
                r50, r95 = common.p50(b) / common.p50(a), common.p95(b) / common.p95(a)
                flag50 = " ✗" if r50 > 1 + GOAL else ""
                flag95 = " ✗" if r95 > 1 + GOAL else ""
                rows.append(
                    [op, phase, f"{ms(common.p50(a))} / {ms(common.p95(a))}",
                     f"{ms(common.p50(b))} / {ms(common.p95(b))}", f"{r50:.2f}{flag50}", f"{r95:.2f}{flag95}"]
                )  # fmt: skip
        lines += [common.table(headers, rows), "", f"✗: more than {GOAL:.0%} slower than on the empty table."]
        if self.deleter and self.deleter.batches:
            batches = self.deleter.batches
            lines += [
                "",
                f"Retention meanwhile: {self.deleter.deleted:,} tasks deleted in {len(batches)} batches "
                f"(p50 {ms(common.p50(batches))} ms, p95 {ms(common.p95(batches))} ms a batch, with their "
                f"attempts and both counts tables updated); {self.left:,} finished tasks left. At one batch a "
                "second a dispatcher deletes up to 86 million tasks a day.",
            ]
        return "\n".join(lines)
