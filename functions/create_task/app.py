"""POST /api/v1/tasks: schedule a task."""

from http import HTTPStatus

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint
from atcore.models import CreateTaskRequest, TaskEnvelope

app = TaskApiResolver()


@app.post("/api/v1/tasks", status_code=HTTPStatus.CREATED)
def create_task(request: CreateTaskRequest) -> TaskEnvelope:
    return TaskEnvelope(task=service.create_task(request))


lambda_handler = api_entrypoint(app)
