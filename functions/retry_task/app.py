"""POST /api/v1/tasks/{id}/retry: run a failed or cancelled task again."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.errors import InvalidRequest
from atcore.models import RetryTaskRequest, TaskEnvelope, TaskId

app = TaskApiResolver()


@app.post(
    "/api/v1/tasks/<id>/retry",
    operation_id="retry_task",
    summary="Run a failed or cancelled task again",
    responses={
        200: {"description": "The task, pending again from attempt 1 (its history is kept)."},
        **error_responses(400, 404, 409, 500, 503, conflict="The task is neither failed nor cancelled."),
    },
)
def retry_task(
    task_id: Annotated[TaskId, Path(alias="id")], request: Annotated[RetryTaskRequest | None, Body()] = None
) -> TaskEnvelope:
    if request is None and app.current_event.body and not isinstance(app.current_event.json_body, dict):
        raise InvalidRequest("request body must be a JSON object")  # an optional body, but not just any
    return TaskEnvelope(task=service.retry_task(task_id, request))


lambda_handler = api_entrypoint(app)
