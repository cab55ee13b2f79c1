"""POST /api/v1/tasks: schedule a task."""

from http import HTTPStatus

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import CreateTaskRequest, TaskEnvelope

app = TaskApiResolver()


@app.post(
    "/api/v1/tasks",
    status_code=HTTPStatus.CREATED,
    operation_id="create_task",
    summary="Schedule a task",
    responses={201: {"description": "The task as stored: pending, 0 attempts."}, **error_responses(400, 413, 500, 503)},
)
def create_task(request: CreateTaskRequest) -> TaskEnvelope:
    return TaskEnvelope(task=service.create_task(request))


lambda_handler = api_entrypoint(app)
