"""GET /api/v1/tasks/{id}: read one task."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import TaskEnvelope, TaskId

app = TaskApiResolver()


@app.get(
    "/api/v1/tasks/<id>",
    operation_id="get_task",
    summary="Read a task",
    responses={200: {"description": "The task."}, **error_responses(400, 404, 500, 503)},
)
def get_task(task_id: Annotated[TaskId, Path(alias="id")]) -> TaskEnvelope:
    return TaskEnvelope(task=service.get_task(task_id))


lambda_handler = api_entrypoint(app)
