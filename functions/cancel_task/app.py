"""DELETE /api/v1/tasks/{id}: cancel a pending or processing task."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import TaskEnvelope, TaskId

app = TaskApiResolver()


@app.delete(
    "/api/v1/tasks/<id>",
    operation_id="cancel_task",
    summary="Cancel a pending or processing task",
    responses={
        200: {"description": "The task, now cancelled."},
        **error_responses(400, 404, 500, 503, not_found="No such task, or it already ended (the message says which)."),
    },
)
def cancel_task(task_id: Annotated[TaskId, Path(alias="id")]) -> TaskEnvelope:
    return TaskEnvelope(task=service.cancel_task(task_id))


lambda_handler = api_entrypoint(app)
