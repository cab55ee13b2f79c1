"""The AWS functions end to end: the dispatcher hands due tasks to SQS, the worker runs what SQS delivers.

Real PostgreSQL (the `sql`/`database` fixtures); SQS, SES and SNS are answered in-process by moto
(fake credentials, us-east-1); callbacks go to an HttpSink on 127.0.0.1. Events come from events/*.json
(devtools/make_events.py), and worker events are built from the messages moto actually holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest

from atcore import config, db, env, execution, execution_repository, service
from atcore.executors import aws, http_transport
from atcore.models import CreateTaskRequest
from atcore.task_queue import TaskQueueOutlet
from devtools.lambda_env import LambdaContext
from devtools.make_events import records_from_received
from devtools.support.aws import use_fake_credentials
from devtools.support.functions import lambda_context, load_event, load_function
from devtools.support.http import free_port
from devtools.support.http_sink import HttpSink

SENDER = "at@example.com"
RUN_SECONDS = 1.5
LEASE_SECONDS = 120.0  # ExecutionSettings' default
HANDOFF_SECONDS = 60.0  # ExecutionSettings' default


def long_running_context() -> LambdaContext:
    """A fresh invocation: far more time left than the dispatcher's run needs."""
    return lambda_context(timeout_seconds=300)


def worker_context() -> LambdaContext:
    """A fresh worker invocation: the WorkerFunction's 60 s timeout ahead."""
    return lambda_context(timeout_seconds=60)


def nearly_timed_out_context() -> LambdaContext:
    """Less time left than the dispatcher's safety margin (5 s)."""
    return lambda_context(timeout_seconds=4)


# --- environment ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:
    # Every AT_*/AWS_* variable the settings read is unset by tests/conftest.py's fresh_settings.
    monkeypatch.setenv("AT_HTTP_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("AT_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("AT_RETRY_MAX_SECONDS", "1")
    monkeypatch.setenv("AT_OUTBOX_DIR", str(tmp_path / "outbox"))
    env.reset()
    yield
    env.reset()
    http_transport.close_idle_connections()


@dataclass
class Queue:
    client: Any
    url: str
    arn: str

    def receive_all(self) -> list[dict]:
        """Every message in the queue (each received once: it stays invisible for the visibility timeout)."""
        messages: list[dict] = []
        while batch := self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", []):
            messages.extend(batch)
        return messages

    def send_raw(self, body: str) -> None:
        self.client.send_message(QueueUrl=self.url, MessageBody=body)


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AT_DISPATCH_RUN_SECONDS", str(RUN_SECONDS))
    return load_function("dispatcher")


@pytest.fixture
def worker() -> ModuleType:
    return load_function("worker")


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, dispatcher: ModuleType) -> Iterator[Queue]:
    """moto for every AWS service, and the TaskQueue the dispatcher sends to (TASK_QUEUE_URL)."""
    import boto3
    from moto import mock_aws

    use_fake_credentials(monkeypatch)
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="at-TaskQueue", Attributes={"VisibilityTimeout": "360"})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        monkeypatch.setenv("TASK_QUEUE_URL", url)
        yield Queue(sqs, url, arn)
    aws.reset_clients()  # the executors' cached clients were made inside the mock


# --- helpers --------------------------------------------------------------------------------------


def insert_task(
    sql, *, in_seconds: float, task_type: str = "http_callback", payload: dict | None = None, max_attempts: int = 3
) -> int:
    payload = payload if payload is not None else {"url": "http://127.0.0.1:9/unused"}
    return sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts) "
        "VALUES (now() + make_interval(secs => :in_seconds), :task_type, CAST(:payload AS jsonb), :max_attempts) "
        "RETURNING id",
        in_seconds=in_seconds,
        task_type=task_type,
        payload=json.dumps(payload),
        max_attempts=max_attempts,
    )[0][0]


def task_row(sql, task_id: int) -> dict:
    columns = (
        "status",
        "attempts",
        "error_message",
        "completed_at",
        "lease_expires_at",
        "lease_seconds",
        "retry_in_seconds",
        "queued_seconds",
    )
    row = sql.run(
        "SELECT status, attempts, error_message, completed_at, lease_expires_at, "
        "       EXTRACT(EPOCH FROM lease_expires_at - updated_at)::float8, "
        "       EXTRACT(EPOCH FROM execute_at - updated_at)::float8, "
        "       EXTRACT(EPOCH FROM queued_until - now())::float8 "
        "FROM scheduled_tasks WHERE id = :id",
        id=task_id,
    )[0]
    return dict(zip(columns, row))


def queued(row: dict) -> bool:
    """Handed to the queue: still pending, no attempt counted, no lease, reserved for a while."""
    return (row["status"], row["attempts"], row["lease_expires_at"]) == ("pending", 0, None) and (
        0 < row["queued_seconds"] <= HANDOFF_SECONDS
    )


def run_dispatcher(dispatcher: ModuleType, context: LambdaContext | None = None) -> tuple[dict, float]:
    started = time.monotonic()
    result = dispatcher.lambda_handler(load_event("dispatcher"), context or long_running_context())
    return result, time.monotonic() - started


def dispatch_due() -> None:
    """One dispatcher pass without the minute-long loop: hand over what is due, send it as the function does."""
    outlet = TaskQueueOutlet(execution.execution_settings())
    with db.connection() as conn:
        refs = outlet.claim(conn, 100)
    outlet.deliver(refs)


def worker_event(queue: Queue, messages: list[dict]) -> dict:
    """The event Lambda's SQS event source mapping would build from these received messages."""
    return records_from_received(messages, queue.arn)


def message_id_of(messages: list[dict], body: str) -> str:
    return next(m["MessageId"] for m in messages if m["Body"] == body)


def callback(url: str) -> dict:
    return {"url": url, "method": "POST", "data": {"hello": "world"}}


# --- the dispatcher -------------------------------------------------------------------------------


def test_scheduled_event_is_what_eventbridge_sends() -> None:
    event = load_event("dispatcher")
    assert event["source"] == "aws.events" and event["detail-type"] == "Scheduled Event"
    assert event["resources"][0].startswith("arn:aws:events:us-east-1:123456789012:rule/")


def test_dispatcher_queues_each_due_task_once_and_leaves_future_ones_pending(sql, queue, dispatcher) -> None:
    due = [insert_task(sql, in_seconds=-seconds) for seconds in (30, 5, 1)]
    future = insert_task(sql, in_seconds=3600)

    result, elapsed = run_dispatcher(dispatcher)

    # It keeps polling for RUN_SECONDS (the next minute's invocation takes over), then returns.
    assert RUN_SECONDS <= elapsed < RUN_SECONDS + 5, elapsed  # not forever: a busy machine may add a second
    assert result["ran_seconds"] >= RUN_SECONDS
    for task_id in due:  # handed over, not started: the worker starts them
        assert queued(task_row(sql, task_id))
    row = task_row(sql, future)
    assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("pending", 0, None)
    messages = queue.receive_all()
    assert sorted((json.loads(m["Body"]) for m in messages), key=lambda body: body["id"]) == [
        {"id": task_id, "attempt": 1} for task_id in due
    ]


def test_dispatcher_sends_a_task_that_falls_due_during_its_run_within_the_second(sql, queue, dispatcher) -> None:
    insert_task(sql, in_seconds=3600)  # something to wait for: without a wake-up it would sleep a full second
    created: list[tuple[int, datetime]] = []

    def create_during_the_run() -> None:
        time.sleep(0.2)
        execute_at = datetime.now(UTC) + timedelta(seconds=0.05)  # due ~0.25 s into the run
        task = service.create_task(
            CreateTaskRequest(
                execute_at=execute_at.isoformat(),
                task_type="http_callback",
                payload={"url": "http://127.0.0.1:9/unused"},
            )
        )
        created.append((task.id, task.execute_at))

    creator = threading.Thread(target=create_during_the_run)
    creator.start()
    run_dispatcher(dispatcher)
    creator.join()

    [(task_id, execute_at)] = created
    [message] = queue.receive_all()
    assert json.loads(message["Body"]) == {"id": task_id, "attempt": 1}
    # The creation woke the sleeping dispatcher (NOTIFY), which then slept until the task was due.
    # Without the wake-up it would have slept on to its next look, ~0.75 s after the task fell due;
    # the bound leaves a busy machine room. Never early: PostgreSQL's now() decides.
    lateness_ms = int(message["Attributes"]["SentTimestamp"]) - execute_at.timestamp() * 1000
    assert -5 <= lateness_ms < 500, lateness_ms  # SentTimestamp is whole milliseconds
    assert queued(task_row(sql, task_id))


def test_dispatcher_sends_25_due_tasks_in_batches_of_at_most_10(sql, queue, dispatcher, monkeypatch) -> None:
    due = [insert_task(sql, in_seconds=-1) for _ in range(25)]
    client = aws.client("sqs")
    batch_sizes: list[int] = []
    send_message_batch = client.send_message_batch

    def counting_send_message_batch(**kwargs: Any) -> dict:
        batch_sizes.append(len(kwargs["Entries"]))
        return send_message_batch(**kwargs)

    monkeypatch.setattr(client, "send_message_batch", counting_send_message_batch)
    dispatch_due()  # one pass of the function's sender

    assert sorted(batch_sizes) == [5, 10, 10]
    bodies = [json.loads(m["Body"]) for m in queue.receive_all()]
    assert len(bodies) == 25
    assert sorted(body["id"] for body in bodies) == due and {body["attempt"] for body in bodies} == {1}
    assert sql.run(
        "SELECT status, attempts, queued_until IS NOT NULL, count(*) FROM scheduled_tasks GROUP BY 1, 2, 3"
    ) == [["pending", 0, True, 25]]


def test_dispatcher_claims_nothing_when_the_invocation_is_about_to_time_out(sql, queue, dispatcher) -> None:
    task_id = insert_task(sql, in_seconds=-1)
    result, elapsed = run_dispatcher(dispatcher, nearly_timed_out_context())
    assert result["ran_seconds"] < 1.0 and elapsed < RUN_SECONDS  # it did not run its loop
    assert task_row(sql, task_id)["status"] == "pending"
    assert queue.receive_all() == []


# --- the worker -----------------------------------------------------------------------------------


def test_dispatcher_gives_back_claims_the_queue_refused(sql, queue, dispatcher, monkeypatch) -> None:
    # GIVEN two due tasks and a queue that refuses the batch (a network error, throttling)
    ids = [insert_task(sql, in_seconds=-1) for _ in range(2)]

    class FailingQueue:
        def send_message_batch(self, **_kwargs):
            raise ConnectionError("queue unreachable")

    monkeypatch.setattr(aws, "client", lambda _service: FailingQueue())
    # WHEN the dispatcher hands them over and tries to send them
    dispatch_due()
    # THEN they are free for the next pass at once, no attempt counted, and nothing was queued
    for task_id in ids:
        row = task_row(sql, task_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"], row["queued_seconds"]) == (
            "pending",
            0,
            None,
            None,
        )
    assert queue.receive_all() == []


def test_worker_event_is_what_the_sqs_event_source_sends(worker) -> None:
    from aws_lambda_powertools.utilities.data_classes import SQSEvent

    event = SQSEvent(load_event("worker"))
    records = list(event.records)
    assert [json.loads(r.body) for r in records] == [{"id": 1, "attempt": 1}, {"id": 2, "attempt": 1}]
    assert {r.event_source for r in records} == {"aws:sqs"}
    assert {r.event_source_arn for r in records} == {"arn:aws:sqs:us-east-1:123456789012:at-TaskQueue"}
    assert records[0].attributes.approximate_receive_count == "1"


def test_worker_runs_queued_callbacks_and_email_and_completes_them(sql, queue, dispatcher, worker, monkeypatch) -> None:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    monkeypatch.setenv("AT_AWS_DELIVERY", "1")
    monkeypatch.setenv("AT_EMAIL_FROM", SENDER)
    boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress=SENDER)
    with HttpSink() as sink:
        callbacks = [insert_task(sql, in_seconds=-1, payload=callback(sink.url)) for _ in range(2)]
        email = insert_task(
            sql,
            in_seconds=-1,
            task_type="send_email",
            payload={"to": "ann@example.com", "subject": "Reminder", "text": "It is time."},
        )
        dispatch_due()
        messages = queue.receive_all()
        assert len(messages) == 3

        response = worker.lambda_handler(worker_event(queue, messages), worker_context())
        arrivals = sink.by_task()

    assert response == {"batchItemFailures": []}
    assert sorted(arrivals) == callbacks
    for task_id in callbacks:
        [arrival] = arrivals[task_id]
        assert arrival.idempotency_key == f"at-task-{task_id}" and arrival.attempt == 1
        assert json.loads(arrival.body) == {"hello": "world"}
    sent = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    assert [(m.source, m.subject, m.body, m.destinations["ToAddresses"]) for m in sent] == [
        (SENDER, "Reminder", "It is time.", ["ann@example.com"])
    ]
    for task_id in [*callbacks, email]:
        row = task_row(sql, task_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("completed", 1, None)
        assert row["completed_at"] is not None and row["error_message"] is None


def test_worker_runs_the_committed_sample_event(sql, queue, worker) -> None:
    """events/worker.json (tasks 1 and 2, attempt 1) against tasks claimed as the dispatcher would."""
    with HttpSink() as sink:
        ids = [insert_task(sql, in_seconds=-1, payload=callback(sink.url)) for _ in range(2)]
        assert ids == [1, 2]  # the sample event's ids (the `sql` fixture restarts the identity)
        with db.connection() as conn:
            execution.hand_over_due(conn, 10, HANDOFF_SECONDS)
        response = worker.lambda_handler(load_event("worker"), worker_context())
        assert {task_id: len(arrivals) for task_id, arrivals in sink.by_task().items()} == {1: 1, 2: 1}
    assert response == {"batchItemFailures": []}
    assert [task_row(sql, task_id)["status"] for task_id in ids] == ["completed", "completed"]


def test_worker_skips_attempts_that_are_no_longer_current(sql, queue, dispatcher, worker) -> None:
    with HttpSink() as sink:
        cancelled = insert_task(sql, in_seconds=-1, payload=callback(sink.url))
        started = insert_task(sql, in_seconds=-1, payload=callback(sink.url))
        rescheduled = insert_task(sql, in_seconds=-1, payload=callback(sink.url))
        dispatch_due()
        messages = queue.receive_all()  # all for attempt 1
        service.cancel_task(cancelled)
        # Another delivery of the same message already started it; and the third was moved to later
        # (a reschedule clears the hand-off; the next one's message will carry its new due time).
        with db.connection() as conn:
            execution_repository.start_attempts(conn, [execution.AttemptRef(id=started, attempt=1)], LEASE_SECONDS)
        sql.run("UPDATE scheduled_tasks SET execute_at = now() + interval '1 hour' WHERE id = :id", id=rescheduled)
        before = {task_id: task_row(sql, task_id) for task_id in (cancelled, started, rescheduled)}

        response = worker.lambda_handler(worker_event(queue, messages), worker_context())
        assert sink.arrivals == []  # nothing executed

    assert response == {"batchItemFailures": []}  # skipping is a success: SQS must not redeliver
    after = {task_id: task_row(sql, task_id) for task_id in (cancelled, started, rescheduled)}
    for task_id in (cancelled, started, rescheduled):
        assert {k: v for k, v in after[task_id].items() if k != "queued_seconds"} == {
            k: v for k, v in before[task_id].items() if k != "queued_seconds"
        }
    assert [after[t]["status"] for t in (cancelled, started, rescheduled)] == ["cancelled", "processing", "pending"]
    assert after[started]["attempts"] == 1


def test_worker_reports_malformed_messages_as_batch_failures(sql, queue, dispatcher, worker) -> None:
    with HttpSink() as sink:
        task_id = insert_task(sql, in_seconds=-1, payload=callback(sink.url))
        dispatch_due()
        queue.send_raw("this is not JSON")
        queue.send_raw('{"attempt": 1}')
        messages = queue.receive_all()

        response = worker.lambda_handler(worker_event(queue, messages), worker_context())
        assert len(sink.by_task()[task_id]) == 1

    failed = sorted(failure["itemIdentifier"] for failure in response["batchItemFailures"])
    assert failed == sorted([message_id_of(messages, "this is not JSON"), message_id_of(messages, '{"attempt": 1}')])
    assert task_row(sql, task_id)["status"] == "completed"


def test_failed_callbacks_are_outcomes_not_batch_failures(sql, queue, dispatcher, worker) -> None:
    with HttpSink() as sink:
        sink.responder = lambda arrival: 500 if arrival.task_id == 1 else 404
        retried = insert_task(sql, in_seconds=-1, payload=callback(sink.url), max_attempts=3)
        rejected = insert_task(sql, in_seconds=-1, payload=callback(sink.url), max_attempts=3)
        assert retried == 1
        dispatch_due()
        response = worker.lambda_handler(worker_event(queue, queue.receive_all()), worker_context())
        assert {task_id: len(arrivals) for task_id, arrivals in sink.by_task().items()} == {retried: 1, rejected: 1}

    assert response == {"batchItemFailures": []}
    row = task_row(sql, retried)  # 5xx: retried later by the dispatcher, with backoff
    assert (row["status"], row["attempts"], row["lease_expires_at"], row["completed_at"]) == ("pending", 1, None, None)
    assert row["error_message"].startswith("callback returned HTTP 500")
    assert 0.1 <= row["retry_in_seconds"] <= 0.2  # AT_RETRY_BASE_SECONDS=0.2, equal jitter: [base/2, base]
    row = task_row(sql, rejected)  # 4xx: not retryable, failed at once
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error_message"].startswith("callback returned HTTP 404") and row["completed_at"] is not None


@contextlib.contextmanager
def database_unreachable() -> Iterator[None]:
    """DB_PORT points at a closed port inside the block; the real database is back after it."""
    closed_port = free_port()  # nothing listens there
    real_port = os.environ["DB_PORT"]

    def use_port(port: str) -> None:
        os.environ["DB_PORT"] = port
        config.database_settings.cache_clear()
        db.reset()

    use_port(str(closed_port))
    try:
        yield
    finally:
        use_port(real_port)


def test_worker_reports_every_record_when_the_database_is_unreachable(sql, queue, dispatcher, worker) -> None:
    with HttpSink() as sink:
        ids = [insert_task(sql, in_seconds=-1, payload=callback(sink.url)) for _ in range(2)]
        dispatch_due()
        messages = queue.receive_all()
        event = worker_event(queue, messages)

        with database_unreachable():
            response = worker.lambda_handler(event, worker_context())
        assert sink.arrivals == []

        # Every message goes back to SQS; the tasks are untouched, still handed over and not started ...
        failed = sorted(failure["itemIdentifier"] for failure in response["batchItemFailures"])
        assert failed == sorted(m["MessageId"] for m in messages)
        assert all(queued(task_row(sql, t)) for t in ids)

        # ... so SQS's redelivery (once the database is back) runs them.
        for record in event["Records"]:
            record["attributes"]["ApproximateReceiveCount"] = "2"
        assert worker.lambda_handler(event, worker_context()) == {"batchItemFailures": []}
        assert {task_id: len(arrivals) for task_id, arrivals in sink.by_task().items()} == {1: 1, 2: 1}
    assert [task_row(sql, t)["status"] for t in ids] == ["completed", "completed"]


# --- waiting is not failing: backpressure, hand-offs, one winner per attempt ----------------------


def test_dispatcher_keeps_at_most_two_batches_per_worker_in_the_queue(sql, queue, dispatcher, monkeypatch) -> None:
    # GIVEN one worker of batch 5 (so room for 10 in the queue) and 30 due tasks, and no worker running
    monkeypatch.setenv("AT_WORKER_MAX_CONCURRENCY", "1")
    monkeypatch.setenv("AT_WORKER_BATCH_SIZE", "5")
    env.reset()
    ids = [insert_task(sql, in_seconds=-30 + n, max_attempts=1) for n in range(30)]
    # WHEN the dispatcher runs for a while
    run_dispatcher(dispatcher)
    # THEN only the 10 oldest due are in the queue; the rest wait in the table; nothing started
    bodies = [json.loads(m["Body"]) for m in queue.receive_all()]
    assert sorted(body["id"] for body in bodies) == ids[:10]
    assert all(queued(task_row(sql, task_id)) for task_id in ids[:10])
    for task_id in ids[10:]:
        row = task_row(sql, task_id)
        assert (row["status"], row["attempts"], row["queued_seconds"]) == ("pending", 0, None)


def test_a_hand_off_that_expired_is_sent_again_and_the_attempt_still_runs_once(sql, queue, worker, monkeypatch) -> None:
    with HttpSink() as sink:
        task_id = insert_task(sql, in_seconds=-1, payload=callback(sink.url), max_attempts=1)
        # GIVEN a message that did not start its task in time (a slow queue, a lost worker)
        dispatch_due()
        sql.run("UPDATE scheduled_tasks SET queued_until = now() - interval '1 second' WHERE id = :id", id=task_id)
        with db.connection() as conn:
            assert execution.recover_expired_handoffs(conn) == [task_id]
        # WHEN the task is handed over again, and then both messages arrive
        dispatch_due()
        messages = queue.receive_all()
        assert [json.loads(m["Body"]) for m in messages] == [{"id": task_id, "attempt": 1}] * 2
        response = worker.lambda_handler(worker_event(queue, messages), worker_context())
        arrivals = sink.by_task()
    # THEN it ran once, attempt 1, and both messages are done
    assert response == {"batchItemFailures": []}
    assert [a.attempt for a in arrivals[task_id]] == [1]
    assert (task_row(sql, task_id)["status"], task_row(sql, task_id)["attempts"]) == ("completed", 1)
    assert sql.run("SELECT number, outcome FROM task_attempts WHERE task_id = :id", id=task_id) == [[1, "succeeded"]]


def short_on_time_context() -> LambdaContext:
    """A worker invocation with less time left than one attempt and its recording need."""
    return lambda_context(timeout_seconds=5)


def test_a_worker_without_time_for_an_attempt_gives_the_tasks_back_unstarted(sql, queue, worker) -> None:
    with HttpSink() as sink:
        ids = [insert_task(sql, in_seconds=-1, payload=callback(sink.url), max_attempts=1) for _ in range(2)]
        dispatch_due()
        response = worker.lambda_handler(worker_event(queue, queue.receive_all()), short_on_time_context())
        assert sink.arrivals == []
    # The messages are done (no 6-minute visibility timeout); the next dispatcher pass sends them again.
    assert response == {"batchItemFailures": []}
    for task_id in ids:
        row = task_row(sql, task_id)
        assert (row["status"], row["attempts"], row["queued_seconds"]) == ("pending", 0, None)
