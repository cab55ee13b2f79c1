"""Scheduled every minute: for about a minute, hand each task to SQS the moment it falls due.

A once-a-minute schedule alone would make tasks up to a minute late; instead each invocation
keeps the dispatcher loop running (it sleeps until the next due time, woken early by new
near-due tasks), and the next invocation takes over as this one ends.
"""

import json
import os
import time

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from atcore import db, execution
from atcore.dispatcher import Dispatcher
from atcore.execution import ClaimedTask
from atcore.observability import logger, metrics, tracer

tracer.patch(["botocore"])  # this function calls AWS: trace those calls

RUN_SECONDS = float(os.environ.get("AT_DISPATCH_RUN_SECONDS", "60"))
_SAFETY_MARGIN_MS = 5_000
_SQS_BATCH = 10
_sqs = None


def _queue():
    global _sqs
    if _sqs is None:
        import boto3

        _sqs = boto3.client("sqs")
    return _sqs


def send_to_queue(tasks: list[ClaimedTask]) -> None:
    """One message per attempt: {"id", "attempt"} (payloads can exceed SQS's message size).
    What SQS refuses goes straight back to pending (else it would wait out its lease)."""
    queue_url = os.environ["TASK_QUEUE_URL"]
    unsent: list[ClaimedTask] = []
    for start in range(0, len(tasks), _SQS_BATCH):
        chunk = tasks[start : start + _SQS_BATCH]
        entries = [{"Id": str(t.id), "MessageBody": json.dumps({"id": t.id, "attempt": t.attempt})} for t in chunk]
        try:
            response = _queue().send_message_batch(QueueUrl=queue_url, Entries=entries)
            failed_ids = {failure["Id"] for failure in response.get("Failed", [])}
        except Exception:  # noqa: BLE001 - any SDK or network error: keep dispatching the rest
            logger.exception("Sending to the task queue failed")
            failed_ids = {entry["Id"] for entry in entries}
        unsent.extend(t for t in chunk if str(t.id) in failed_ids)
    if unsent:
        with db.connection() as conn:
            execution.release_claims(conn, unsent)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    started = time.monotonic()
    with db.connection() as conn:
        age = execution.oldest_due_age_seconds(conn)
    metrics.add_metric(name="OldestDueTaskAgeSeconds", unit=MetricUnit.Seconds, value=age)

    def keep_running() -> bool:
        return time.monotonic() - started < RUN_SECONDS and context.get_remaining_time_in_millis() > _SAFETY_MARGIN_MS

    Dispatcher(send_to_queue).run(keep_running)
    return {"ran_seconds": round(time.monotonic() - started, 1)}
