"""Fed by SQS: start the attempts a batch of messages names, run them concurrently, record them.

Task failures are outcomes (retries are scheduled in the database), so a message fails only when
it is not one of ours or its outcome could not be recorded; SQS then redelivers it (partial batch
response). A duplicate delivery starts nothing: each attempt has one winner (atcore.execution).
"""

from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from atcore import execution
from atcore.observability import logger, metrics, tracer
from atcore.task_queue import parse_message

tracer.patch(["botocore"])  # this function calls AWS: trace those calls


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    refs, failed = {}, []
    for record in SQSEvent(event).records:
        try:
            refs[record.message_id] = parse_message(record.body)
        except ValueError:  # malformed JSON, or not {"id", "attempt"} (pydantic's error is one too)
            logger.error("Not a task message", extra={"message_id": record.message_id})
            failed.append(record.message_id)
    try:
        seconds_left = lambda: context.get_remaining_time_in_millis() / 1000  # noqa: E731
        unrecorded = set(execution.run_batch(list(refs.values()), seconds_left))
    except Exception:  # noqa: BLE001 - the database is away or a bug: let SQS deliver the batch again
        logger.exception("Batch failed")
        unrecorded = set(refs.values())
    failed += [message_id for message_id, ref in refs.items() if ref in unrecorded]
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
