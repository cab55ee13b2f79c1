"""POST /api/v1/tasks: schedule a task (at most once per Idempotency-Key)."""

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header

from atcore import service
from atcore.api import IDEMPOTENCY_KEY_HEADER, TaskApiResolver, api_entrypoint, created_response, error_responses
from atcore.models import CreateTaskRequest, TaskEnvelope

app = TaskApiResolver()


@app.post(
    "/api/v1/tasks",
    status_code=HTTPStatus.CREATED,
    operation_id="create_task",
    summary="Schedule a task",
    responses={
        201: {"description": "The task as stored: pending, 0 attempts (or, replayed, as an earlier request made it)."},
        **error_responses(400, 409, 413, 422, 500, 503),
    },
)
def create_task(
    request: CreateTaskRequest, idempotency_key: Annotated[str | None, Header(**IDEMPOTENCY_KEY_HEADER)] = None
) -> Response[TaskEnvelope]:
    created = service.create_tasks(
        [request],
        batch=False,
        body=app.current_event.json_body,
        created_by=app.caller(),
        idempotency_key=idempotency_key,
    )
    return created_response(TaskEnvelope(task=created.tasks[0]), created.replayed)


lambda_handler = api_entrypoint(app)
