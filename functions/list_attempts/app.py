"""GET /api/v1/tasks/{id}/attempts: what happened, attempt by attempt."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import AttemptList, TaskId

app = TaskApiResolver()


@app.get(
    "/api/v1/tasks/<id>/attempts",
    operation_id="list_attempts",
    summary="A task's attempts, oldest first",
    responses={200: {"description": "The attempts and how each ended."}, **error_responses(400, 404, 500, 503)},
)
def list_attempts(task_id: Annotated[TaskId, Path(alias="id")]) -> AttemptList:
    return service.list_attempts(task_id)


lambda_handler = api_entrypoint(app)
