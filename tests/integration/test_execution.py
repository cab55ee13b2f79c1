"""Executing tasks against real PostgreSQL: timing, exactly-once claims, retries, leases, cancel."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from atcore import db, env, execution, execution_repository, service
from atcore.dispatcher import Dispatcher
from atcore.models import CreateTaskRequest
from devtools.engine import LocalEngine
from devtools.support.functions import invoke, load_event
from devtools.support.http_sink import HttpSink
from devtools.support.waiting import wait_for


@pytest.fixture(autouse=True)
def fast_execution(monkeypatch, tmp_path):
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("AT_RETRY_BASE_SECONDS", "0.05")
    monkeypatch.setenv("AT_RETRY_MAX_SECONDS", "0.2")
    monkeypatch.setenv("AT_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.delenv("AT_AWS_DELIVERY", raising=False)
    env.reset()
    yield
    env.reset()


@pytest.fixture
def engine():
    running = LocalEngine(workers=8).start()
    yield running
    running.stop()


def schedule_callback(url: str, in_seconds: float, max_attempts: int = 3) -> int:
    when = datetime.now(UTC) + timedelta(seconds=in_seconds)
    request = CreateTaskRequest(
        execute_at=when.isoformat(),
        task_type="http_callback",
        payload={"url": url, "method": "POST", "data": {"hello": "world"}},
        max_attempts=max_attempts,
    )
    return service.create_task(request).id


def insert_due_tasks(sql, count: int, task_type: str, payload: dict) -> None:
    sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT now() - interval '1 second', :task_type, CAST(:payload AS jsonb) FROM generate_series(1, :count)",
        task_type=task_type,
        payload=json.dumps(payload),
        count=count,
    )


def task_row(sql, task_id: int) -> dict:
    columns = ("status", "attempts", "error_message", "completed_at", "lease_expires_at")
    row = sql.run(
        "SELECT status, attempts, error_message, completed_at, lease_expires_at FROM scheduled_tasks WHERE id = :id",
        id=task_id,
    )[0]
    return dict(zip(columns, row))


def finished(sql, task_id: int) -> dict | None:
    row = task_row(sql, task_id)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def test_task_due_in_2s_runs_on_time_and_once(sql, engine):
    with HttpSink() as sink:
        task_id = schedule_callback(sink.url, in_seconds=2)
        due = sql.run("SELECT extract(epoch FROM execute_at)::float8 FROM scheduled_tasks WHERE id = :id", id=task_id)[
            0
        ][0]
        row = wait_for(lambda: finished(sql, task_id), timeout=6)
        arrivals = sink.by_task()[task_id]  # completed after one attempt: no claim can deliver it again
    assert len(arrivals) == 1
    lateness = arrivals[0].at - due
    assert 0 <= lateness < 1.0, lateness
    assert row["status"] == "completed" and row["attempts"] == 1 and row["completed_at"] is not None
    assert arrivals[0].idempotency_key == f"at-task-{task_id}"
    assert json.loads(arrivals[0].body) == {"hello": "world"}


def test_four_dispatchers_racing_claim_each_task_exactly_once(sql):
    insert_due_tasks(sql, 10_000, "http_callback", {"url": "http://127.0.0.1:9/unused"})
    claimed: list[int] = []
    lock = threading.Lock()

    class RecordingOutlet:
        """Takes whatever is claimed and reports it done, so the rows leave 'processing'."""

        full_wait_seconds = 0.005

        def room(self, _conn):
            return 250

        def claim(self, conn, limit):
            return execution.claim_due(conn, limit, lease_seconds=60)

        def deliver(self, tasks):
            with lock:
                claimed.extend(task.id for task in tasks)
            with db.connection() as conn:
                execution.record_outcomes(
                    conn, [execution.Outcome(task_id=t.id, attempt=t.attempt, succeeded=True) for t in tasks]
                )

    settings = execution.ExecutionSettings(claim_batch_size=250)
    dispatchers = [Dispatcher(RecordingOutlet(), settings) for _ in range(4)]
    start = threading.Barrier(4)

    def race(dispatcher):
        start.wait()
        deadline = time.monotonic() + 60
        while len(claimed) < 10_000 and time.monotonic() < deadline:
            dispatcher.run_once()

    threads = [threading.Thread(target=race, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == 10_000 and len(set(claimed)) == 10_000
    assert sql.run("SELECT status, count(*) FROM scheduled_tasks GROUP BY status") == [["completed", 10_000]]


def test_callback_failing_twice_then_succeeding_completes_with_3_attempts(sql, engine):
    with HttpSink(lambda arrival: 503 if arrival.attempt < 3 else 200) as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.3, max_attempts=5)
        row = wait_for(lambda: finished(sql, task_id))
        assert [a.attempt for a in sink.by_task()[task_id]] == [1, 2, 3]
    assert row["status"] == "completed" and row["attempts"] == 3
    assert row["error_message"].startswith("callback returned HTTP 503")  # the last error is kept


def test_callback_always_failing_ends_failed_with_the_last_error(sql, engine):
    with HttpSink(lambda _arrival: 500) as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.3, max_attempts=3)
        row = wait_for(lambda: finished(sql, task_id))
        assert len(sink.by_task()[task_id]) == 3
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["error_message"].startswith("callback returned HTTP 500") and row["completed_at"] is not None


def test_non_retryable_failure_fails_at_once(sql, engine):
    with HttpSink(lambda _arrival: 404) as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.2, max_attempts=5)
        row = wait_for(lambda: finished(sql, task_id))
        assert len(sink.by_task()[task_id]) == 1
    assert row["status"] == "failed" and row["attempts"] == 1


def test_unknown_task_type_fails_without_retries(sql, engine):
    insert_due_tasks(sql, 1, "teleport", {"to": "mars"})
    row = wait_for(lambda: finished(sql, 1))
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "unknown task_type 'teleport'" in row["error_message"]


def test_cancel_while_processing_stays_cancelled(sql, engine):
    release = threading.Event()
    entered = threading.Event()

    def hold(_arrival):
        entered.set()
        release.wait(10)
        return 200

    # GIVEN a callback that is in flight
    with HttpSink(hold) as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.2)
        assert entered.wait(5)
        assert task_row(sql, task_id)["status"] == "processing"
        # WHEN the client cancels it, and only then the callback returns 200
        event = load_event("cancel_task") | {"path": f"/api/v1/tasks/{task_id}", "pathParameters": {"id": str(task_id)}}
        status, body = invoke("cancel_task", event)
        assert status == 200 and body["task"]["status"] == "cancelled"
        release.set()
        engine.wait_until_idle()  # the worker has recorded its (late) outcome
    # THEN the task stays cancelled
    row = task_row(sql, task_id)
    assert row["status"] == "cancelled" and row["completed_at"] is None


def test_expired_lease_of_a_dead_worker_is_retried_and_completes(sql, monkeypatch):
    with HttpSink() as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.05)
        time.sleep(0.1)
        # GIVEN a worker that claimed the task with a short lease and died without reporting
        with db.connection() as conn:
            [claimed] = execution.claim_due(conn, batch_size=10, lease_seconds=0.5)
        assert claimed.id == task_id and task_row(sql, task_id)["status"] == "processing"
        # WHEN an engine runs after the lease has expired
        running = LocalEngine(workers=2).start()
        try:
            row = wait_for(lambda: finished(sql, task_id))
        finally:
            running.stop()
    # THEN the task was retried once and completed
    assert row["status"] == "completed" and row["attempts"] == 2
    assert [a.attempt for a in sink.by_task()[task_id]] == [2]


def test_expired_lease_on_the_last_attempt_fails_the_task(sql):
    insert_due_tasks(sql, 1, "http_callback", {"url": "http://127.0.0.1:9/"})
    sql.run(
        "UPDATE scheduled_tasks SET status = 'processing', attempts = max_attempts, "
        "lease_expires_at = now() - interval '1 second'"
    )
    with db.connection() as conn:
        assert execution.recover_expired_leases(conn) == [(1, "failed")]
    row = task_row(sql, 1)
    assert row["status"] == "failed" and "lease expired" in row["error_message"]


def test_late_outcome_of_an_old_attempt_is_ignored(sql):
    insert_due_tasks(sql, 1, "http_callback", {"url": "http://127.0.0.1:9/"})
    sql.run(
        "UPDATE scheduled_tasks SET status = 'processing', attempts = 2, lease_expires_at = now() + interval '1 minute'"
    )
    with db.connection() as conn:
        stale = execution.Outcome(task_id=1, attempt=1, succeeded=True)
        assert execution.record_outcomes(conn, [stale]) == {}
    assert task_row(sql, 1)["status"] == "processing"


def test_pending_tasks_are_not_claimed_early(sql):
    sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) VALUES (now() + interval '5 seconds', 't', '{}')"
    )
    with db.connection() as conn:
        assert execution.claim_due(conn, batch_size=10, lease_seconds=60) == []
        assert execution_repository.seconds_until_next_wake(conn) == 1.0  # at most the wake horizon


def test_engine_process_killed_mid_batch_every_task_ends_once_after_its_lease(sql):
    import os
    import signal
    import subprocess
    import sys

    from devtools.support.functions import ROOT

    hold = threading.Event()

    def slow_first_attempts(arrival):
        if arrival.attempt == 1:
            hold.wait(10)  # the first engine dies while these callbacks are in flight
        return 200

    with HttpSink(slow_first_attempts) as sink:
        insert_due_tasks(sql, 20, "http_callback", {"url": sink.url})
        # GIVEN an engine process that claimed the batch (2 s leases) and is mid-callback
        env = os.environ | {"AT_LEASE_SECONDS": "2", "AT_HTTP_ALLOW_PRIVATE": "1", "POWERTOOLS_LOG_LEVEL": "WARNING"}
        engine = subprocess.Popen([sys.executable, "-m", "devtools.engine"], cwd=ROOT, env=env)
        try:
            wait_for(lambda: len(sink.arrivals) >= 20, timeout=20)
            assert sql.run("SELECT count(*) FROM scheduled_tasks WHERE status = 'processing'") == [[20]]
        finally:
            # WHEN it is killed without a chance to report
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
        hold.set()
        # THEN a new engine retries each task after its lease, and each ends completed exactly once
        running = LocalEngine(workers=4).start()
        try:
            wait_for(
                lambda: sql.run("SELECT count(*) FROM scheduled_tasks WHERE status = 'completed'") == [[20]], timeout=20
            )
        finally:
            running.stop()
        second_attempts = [a for a in sink.arrivals if a.attempt == 2]
    assert sql.run("SELECT DISTINCT status, attempts FROM scheduled_tasks") == [["completed", 2]]
    assert sorted(a.task_id for a in second_attempts) == list(range(1, 21))


def test_local_engine_with_a_backlog_longer_than_the_lease_fails_nothing(sql, monkeypatch):
    # GIVEN 2 workers, 1 s leases, and 20 one-attempt tasks whose callbacks take 0.3 s (3 s of work)
    monkeypatch.setenv("AT_LEASE_SECONDS", "1")
    env.reset()

    def slow(_arrival):
        time.sleep(0.3)
        return 200

    with HttpSink(slow) as sink:
        insert_due_tasks(sql, 20, "http_callback", {"url": sink.url})
        sql.run("UPDATE scheduled_tasks SET max_attempts = 1")
        # WHEN the engine works through them
        running = LocalEngine(workers=2).start()
        try:
            wait_for(
                lambda: (
                    sql.run("SELECT count(*) FROM scheduled_tasks WHERE status IN ('completed', 'failed')") == [[20]]
                ),
                timeout=30,
            )
        finally:
            running.stop()
        arrivals = sink.by_task()
    # THEN waiting for a free worker cost no task its lease: each ran once and completed
    assert sql.run("SELECT status, attempts, count(*) FROM scheduled_tasks GROUP BY 1, 2") == [["completed", 1, 20]]
    assert sorted(len(a) for a in arrivals.values()) == [1] * 20


def history(sql, task_id: int) -> list[tuple]:
    """(number, outcome, error, finished?) of each attempt, oldest first."""
    return [
        tuple(row)
        for row in sql.run(
            "SELECT number, outcome, error, finished_at IS NOT NULL FROM task_attempts WHERE task_id = :id ORDER BY number",
            id=task_id,
        )
    ]


def test_attempt_history_is_written_with_each_start_and_outcome(sql, engine):
    with HttpSink(lambda arrival: 503 if arrival.attempt < 3 else 200) as sink:
        task_id = schedule_callback(sink.url, in_seconds=0.2, max_attempts=5)
        wait_for(lambda: finished(sql, task_id))
    rows = history(sql, task_id)
    assert [row[:2] for row in rows] == [(1, "retry_scheduled"), (2, "retry_scheduled"), (3, "succeeded")]
    assert rows[0][2].startswith("callback returned HTTP 503") and rows[2][2] is None
    assert all(finished_at for *_, finished_at in rows)
    started_before_finished = sql.run("SELECT bool_and(started_at <= finished_at) FROM task_attempts")
    assert started_before_finished == [[True]]


def test_attempt_history_records_expired_leases_and_cancelled_attempts(sql):
    insert_due_tasks(sql, 2, "http_callback", {"url": "http://127.0.0.1:9/"})
    with db.connection() as conn:
        claimed = execution.claim_due(conn, batch_size=10, lease_seconds=60)
    assert [(task.id, task.attempt) for task in claimed] == [(1, 1), (2, 1)]
    assert history(sql, 1) == [(1, "running", None, False)]
    # Task 1's worker died (its lease is over); task 2 was cancelled while its attempt ran, then its result came in.
    service.cancel_task(2)
    sql.run("UPDATE scheduled_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = 1")
    with db.connection() as conn:
        assert execution.recover_expired_leases(conn) == [(1, "pending")]
        late = execution.Outcome(task_id=2, attempt=1, succeeded=True)
        assert execution.record_outcomes(conn, [late]) == {}
    assert history(sql, 1) == [(1, "lease_expired", "attempt 1 did not finish: its lease expired", True)]
    assert history(sql, 2) == [(1, "superseded", "the task was cancelled while this attempt ran", True)]


def test_retention_deletes_finished_tasks_past_it_with_their_history_and_keeps_totals_exact(sql):
    insert_due_tasks(sql, 6, "http_callback", {"url": "http://127.0.0.1:9/"})
    with db.connection() as conn:
        execution.claim_due(conn, batch_size=10, lease_seconds=60)
    sql.run(
        "UPDATE scheduled_tasks SET status = 'completed', completed_at = now(), lease_expires_at = NULL WHERE id <= 4"
    )
    sql.run("UPDATE scheduled_tasks SET status = 'cancelled', lease_expires_at = NULL WHERE id = 5")
    # Tasks 1, 2 and 5 finished 31 days ago; 3 and 4 yesterday; 6 is still processing (and old).
    sql.run("UPDATE scheduled_tasks SET updated_at = now() - interval '31 days' WHERE id IN (1, 2, 5, 6)")
    sql.run("UPDATE scheduled_tasks SET updated_at = now() - interval '1 day' WHERE id IN (3, 4)")
    with db.connection() as conn:
        assert execution.delete_expired_tasks(conn, retention_days=0) == 0  # 0 keeps everything
        assert execution.delete_expired_tasks(conn, retention_days=30, batch_size=2) == 2
        assert execution.delete_expired_tasks(conn, retention_days=30, batch_size=2) == 1
        assert execution.delete_expired_tasks(conn, retention_days=30, batch_size=2) == 0
    assert [row[0] for row in sql.run("SELECT id FROM scheduled_tasks ORDER BY id")] == [3, 4, 6]
    assert sql.run("SELECT DISTINCT task_id FROM task_attempts ORDER BY 1") == [[3], [4], [6]]
    status, body = invoke(
        "list_tasks",
        load_event("list_tasks") | {"queryStringParameters": None, "multiValueQueryStringParameters": None},
    )
    assert status == 200 and body["total"] == 3
