"""Fed by SQS: run each attempt a message names and record its outcome.

Task failures are outcomes (retries are scheduled in the database), so a message fails only
when its outcome could not be recorded; SQS then redelivers it (partial batch response).
"""

import json

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from atcore import execution
from atcore.observability import logger, metrics, tracer

tracer.patch(["botocore"])  # this function calls AWS: trace those calls

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def run_message(record: SQSRecord) -> None:
    logger.remove_keys(["task_id"])  # keys persist across records of a batch
    message = json.loads(record.body)
    logger.append_keys(task_id=message["id"])
    execution.run_attempt(int(message["id"]), int(message["attempt"]))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=run_message, processor=processor, context=context)
