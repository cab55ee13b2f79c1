"""DELETE /api/v1/tasks/{id}: cancel a pending or processing task."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint
from atcore.models import TaskEnvelope, TaskId

app = TaskApiResolver()


@app.delete("/api/v1/tasks/<task_id>")
def cancel_task(task_id: Annotated[TaskId, Path()]) -> TaskEnvelope:
    return TaskEnvelope(task=service.cancel_task(task_id))


lambda_handler = api_entrypoint(app)
