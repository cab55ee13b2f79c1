"""POST /api/v1/tasks/batch: schedule up to 1,000 tasks at once, all or none."""

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header

from atcore import service
from atcore.api import IDEMPOTENCY_KEY_HEADER, TaskApiResolver, api_entrypoint, created_response, error_responses
from atcore.models import MAX_BATCH_BODY_BYTES, BatchCreateRequest, TasksEnvelope

app = TaskApiResolver(max_body_bytes=MAX_BATCH_BODY_BYTES)


@app.post(
    "/api/v1/tasks/batch",
    status_code=HTTPStatus.CREATED,
    operation_id="create_tasks_batch",
    summary="Schedule many tasks in one transaction",
    responses={
        201: {"description": "The tasks as stored, in the request's order."},
        **error_responses(400, 409, 413, 422, 500, 503),
    },
)
def create_tasks_batch(
    request: BatchCreateRequest, idempotency_key: Annotated[str | None, Header(**IDEMPOTENCY_KEY_HEADER)] = None
) -> Response[TasksEnvelope]:
    created = service.create_tasks(
        request.tasks,
        batch=True,
        body=app.current_event.json_body,
        created_by=app.caller(),
        idempotency_key=idempotency_key,
    )
    return created_response(TasksEnvelope(tasks=created.tasks), created.replayed)


lambda_handler = api_entrypoint(app)
