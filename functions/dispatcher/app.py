"""Scheduled every minute: for about a minute, hand each task to SQS the moment it falls due.

A once-a-minute schedule alone would make tasks up to a minute late; instead each invocation
keeps the dispatcher loop running (it sleeps until the next due time, woken early by new
near-due tasks), and the next invocation takes over as this one ends.
"""

import time

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from atcore import db, execution, execution_repository
from atcore.dispatcher import Dispatcher
from atcore.observability import logger, metrics, tracer
from atcore.task_queue import TaskQueueOutlet

tracer.patch(["botocore"])  # this function calls AWS: trace those calls

_SAFETY_MARGIN_MS = 5_000


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    started = time.monotonic()
    settings = execution.execution_settings()
    with db.connection() as conn:
        age = execution_repository.oldest_due_age_seconds(conn)
    metrics.add_metric(name="OldestDueTaskAgeSeconds", unit=MetricUnit.Seconds, value=age)

    def keep_running() -> bool:
        return (
            time.monotonic() - started < settings.dispatch_run_seconds
            and context.get_remaining_time_in_millis() > _SAFETY_MARGIN_MS
        )

    Dispatcher(TaskQueueOutlet(settings), settings).run(keep_running)
    return {"ran_seconds": round(time.monotonic() - started, 1)}
