"""The AWS execution path as production runs it: the real dispatcher and worker functions, each in
execution environments of its own (one invocation at a time), SQS answered by moto in server mode,
and Lambda's event source mapping between them, settings read from template.yaml
(devtools.aws_topology). Callbacks go to an HttpSink on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import threading
import time

from atcore import db, execution
from devtools.aws_topology import AwsTopology
from devtools.lambda_env import LambdaEnvironment
from devtools.make_events import sqs_record
from devtools.support.http_sink import HttpSink
from devtools.support.waiting import wait_for


def database_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith("DB_")}


def insert_due_callbacks(sql, count: int, url: str, max_attempts: int = 1) -> list[int]:
    payload = json.dumps({"url": url, "method": "POST", "data": {"hello": "world"}})
    rows = sql.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts) "
        "SELECT now() - interval '1 second', 'http_callback', CAST(:payload AS jsonb), :max_attempts "
        "FROM generate_series(1, :count) RETURNING id",
        payload=payload,
        count=count,
        max_attempts=max_attempts,
    )
    return [row[0] for row in rows]


def statuses(sql) -> dict[tuple[str, int], int]:
    return {
        (status, attempts): n
        for status, attempts, n in sql.run("SELECT status, attempts, count(*) FROM scheduled_tasks GROUP BY 1, 2")
    }


def slow_ok(_arrival: object) -> int:
    time.sleep(0.1)  # a receiver that takes 100 ms
    return 200


def test_a_backlog_longer_than_the_lease_runs_every_task_once_and_fails_none(sql):
    # GIVEN 600 tasks due at once with one attempt each, 100 ms callbacks, and 2 workers of batch 5:
    # the backlog takes twice the 3 s lease to drain, or more (the lease leaves an attempt room
    # for a busy machine: at 1 s, one callback in a few hundred outlived it and failed).
    with HttpSink(slow_ok) as sink:
        ids = insert_due_callbacks(sql, 600, sink.url, max_attempts=1)
        overrides = {"AT_LEASE_SECONDS": "3", "AT_DISPATCH_RUN_SECONDS": "20", "POWERTOOLS_LOG_LEVEL": "WARNING"}
        with AwsTopology(database_env(), overrides=overrides, max_concurrency=2) as aws:
            # WHEN the dispatcher's scheduled invocation hands them over and the workers run them
            dispatching = aws.dispatch_in_background()
            wait_for(
                lambda: statuses(sql).get(("completed", 1)) == 600 or statuses(sql).get(("failed", 1)), timeout=120
            )
            dispatching.join(30)
            depth, dead = aws.queue_depths()
            stats = aws.mapping.stats
        arrivals = sink.by_task()
    # THEN every task ran exactly once, attempt 1, and completed; nothing waits or went to the DLQ
    assert statuses(sql) == {("completed", 1): 600}
    assert sorted(arrivals) == ids
    assert all([a.attempt for a in arrivals[task_id]] == [1] for task_id in ids)
    assert (depth, dead) == (0, 0)
    assert stats.failed_records == 0 and stats.errors == 0
    assert stats.cold_starts == 2  # one execution environment per concurrent worker, kept warm


def test_one_message_delivered_to_two_concurrent_workers_runs_its_task_once(sql):
    with HttpSink(slow_ok) as sink, AwsTopology(database_env(), max_concurrency=1) as aws:
        [task_id] = insert_due_callbacks(sql, 1, sink.url, max_attempts=3)
        with db.connection() as conn:
            [ref] = execution.hand_over_due(conn, 10, handoff_seconds=60)
        # GIVEN the same SQS record in two worker invocations at once (SQS delivers at least once)
        record = sqs_record(
            "m-1",
            "receipt-1",
            json.dumps({"id": ref.id, "attempt": ref.attempt}),
            {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
        )
        workers = [
            LambdaEnvironment(aws.settings.worker, aws.environ(aws.settings.worker), aws.log_dir / f"dup{n}.log")
            for n in range(2)
        ]
        for worker in workers:  # warm, so both invocations really overlap
            worker.invoke({"Records": []})
        results: list = []
        threads = [
            threading.Thread(target=lambda w=w: results.append(w.invoke({"Records": [record]}))) for w in workers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for worker in workers:
            worker.close()
        arrivals = sink.by_task()
    # THEN one of them ran it; the other started nothing; both report success
    assert [r.result for r in results] == [{"batchItemFailures": []}] * 2
    assert [a.attempt for a in arrivals[task_id]] == [1]
    assert statuses(sql) == {("completed", 1): 1}


def test_a_message_that_is_not_ours_is_redelivered_then_dead_lettered_while_tasks_run(sql):
    # GIVEN due tasks and, in the queue, a message the worker cannot take (1 s visibility timeout)
    with HttpSink() as sink:
        ids = insert_due_callbacks(sql, 5, sink.url)
        overrides = {"AT_DISPATCH_RUN_SECONDS": "2", "POWERTOOLS_LOG_LEVEL": "CRITICAL"}
        with AwsTopology(database_env(), overrides=overrides, max_concurrency=2, visibility_timeout=1) as aws:
            aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody="not a task message")
            # WHEN the dispatcher and the workers run
            aws.invoke_dispatcher()
            max_receives = aws.settings.queue.max_receive_count
            wait_for(lambda: aws.queue_depths() == (0, 1), timeout=60)
            stats = aws.mapping.stats
            requests = aws.sqs_requests()
        arrivals = sink.by_task()
    # THEN the tasks ran once each; the bad message was reported failed on each of its receives
    # (partial batch response), came back after the visibility timeout, and went to the DLQ
    assert statuses(sql) == {("completed", 1): 5}
    assert sorted(arrivals) == ids
    assert stats.failed_records == max_receives
    assert requests["SendMessageBatch"] >= 1 and requests["DeleteMessageBatch"] >= 1
