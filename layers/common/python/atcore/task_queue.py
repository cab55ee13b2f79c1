"""The SQS task queue between the AWS dispatcher and the worker: the dispatcher's outlet.

A message names one attempt, {"id", "attempt"} (payloads can exceed SQS's message size). The
dispatcher hands tasks over without starting them and keeps at most max_queued in the queue
(backpressure): the rest wait in the table, oldest due first, where a cancel or a reschedule
still simply wins. What SQS refuses goes straight back to the table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from atcore import db, execution, execution_repository
from atcore.env import ConfigurationError
from atcore.execution import AttemptRef, ExecutionSettings
from atcore.executors import aws
from atcore.observability import logger

SQS_BATCH_LIMIT = 10  # send_message_batch takes at most 10 entries
SEND_CONCURRENCY = 10


@functools.cache
def _senders() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="at-send")


def message_body(ref: AttemptRef) -> str:
    return json.dumps({"id": ref.id, "attempt": ref.attempt})


def parse_message(body: str) -> AttemptRef:
    """Raises ValueError (json, pydantic) for a body that is not a message of ours."""
    return AttemptRef.model_validate_json(body)


class TaskQueueOutlet:
    """Dispatcher → SQS. `queue_url` defaults to TASK_QUEUE_URL (set in template.yaml)."""

    full_wait_seconds = 0.05  # a batch takes ~0.1 s or more to run: polling faster gains nothing

    def __init__(self, settings: ExecutionSettings, queue_url: str | None = None) -> None:
        self._settings = settings
        queue_url = queue_url or settings.task_queue_url
        if not queue_url:
            raise ConfigurationError("TASK_QUEUE_URL is not set: the dispatcher has no queue to hand tasks to")
        self._queue_url = queue_url

    def room(self, conn: db.Connection) -> int:
        return self._settings.max_queued - execution_repository.count_queued(conn)

    def claim(self, conn: db.Connection, limit: int) -> list[AttemptRef]:
        return execution.hand_over_due(conn, limit, self._settings.handoff_seconds)

    def deliver(self, claimed: Sequence[object]) -> None:
        refs = [ref for ref in claimed if isinstance(ref, AttemptRef)]
        chunks = [refs[start : start + SQS_BATCH_LIMIT] for start in range(0, len(refs), SQS_BATCH_LIMIT)]
        # Batches go out concurrently: a hand-over of 100 tasks is one round trip to SQS, not ten.
        unsent = [ref for refused in _senders().map(self._send, chunks) for ref in refused]
        if unsent:
            with db.connection() as conn:
                execution.release_handoffs(conn, unsent)

    def _send(self, chunk: list[AttemptRef]) -> list[AttemptRef]:
        """Sends one batch; returns what SQS did not take."""
        entries = [{"Id": str(i), "MessageBody": message_body(ref)} for i, ref in enumerate(chunk)]
        try:
            response = aws.client("sqs").send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            failed = {int(failure["Id"]) for failure in response.get("Failed", [])}
        except Exception:  # noqa: BLE001 - any SDK or network error: keep dispatching the rest
            logger.exception("Sending to the task queue failed")
            failed = set(range(len(chunk)))
        return [ref for i, ref in enumerate(chunk) if i in failed]
