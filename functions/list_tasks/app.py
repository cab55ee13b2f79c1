"""GET /api/v1/tasks: list tasks, newest first, with filters and pagination."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint
from atcore.models import DEFAULT_PAGE_SIZE, PageLimit, PageOffset, StatusFilter, TaskPage, TaskTypeFilter

app = TaskApiResolver()


@app.get("/api/v1/tasks")
def list_tasks(
    status: Annotated[StatusFilter, Query()] = None,
    task_type: Annotated[TaskTypeFilter, Query()] = None,
    limit: Annotated[PageLimit, Query()] = DEFAULT_PAGE_SIZE,
    offset: Annotated[PageOffset, Query()] = 0,
) -> TaskPage:
    return service.list_tasks(status=status, task_type=task_type, limit=limit, offset=offset)


lambda_handler = api_entrypoint(app)
