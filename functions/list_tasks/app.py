"""GET /api/v1/tasks: list tasks, newest first, with filters and pagination."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import DEFAULT_PAGE_SIZE, PageLimit, PageOffset, StatusFilter, TaskPage, TaskTypeFilter

app = TaskApiResolver()


@app.get(
    "/api/v1/tasks",
    operation_id="list_tasks",
    summary="List tasks, newest first",
    responses={
        200: {"description": "One page of the matching tasks, and their total."},
        **error_responses(400, 500, 503),
    },
)
def list_tasks(
    status: Annotated[StatusFilter, Query()] = None,
    task_type: Annotated[TaskTypeFilter, Query()] = None,
    limit: Annotated[PageLimit, Query()] = DEFAULT_PAGE_SIZE,
    offset: Annotated[PageOffset, Query()] = 0,
) -> TaskPage:
    return service.list_tasks(status=status, task_type=task_type, limit=limit, offset=offset)


lambda_handler = api_entrypoint(app)
