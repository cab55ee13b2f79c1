"""PATCH /api/v1/tasks/{id}: change a pending task's time, payload or max_attempts."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import PatchTaskRequest, TaskEnvelope, TaskId

app = TaskApiResolver()


@app.patch(
    "/api/v1/tasks/<id>",
    operation_id="update_task",
    summary="Change a pending task",
    responses={
        200: {"description": "The task with its new values."},
        **error_responses(
            400, 404, 409, 413, 500, 503, conflict="The task is not pending (the message says what it is)."
        ),
    },
)
def update_task(task_id: Annotated[TaskId, Path(alias="id")], change: PatchTaskRequest) -> TaskEnvelope:
    return TaskEnvelope(task=service.update_task(task_id, change))


lambda_handler = api_entrypoint(app)
