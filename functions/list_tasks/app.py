"""GET /api/v1/tasks: list tasks, newest first, with filters (status, type, due time), offset or cursor paging."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query

from atcore import service
from atcore.api import JSON, PAGE_BUDGET, TaskApiResolver, api_entrypoint, error_responses, page_response
from atcore.models import (
    DEFAULT_PAGE_SIZE,
    ExecuteAfterFilter,
    ExecuteBeforeFilter,
    ListFilters,
    PageCursor,
    PageLimit,
    PageOffset,
    StatusFilter,
    TaskPage,
    TaskTypeFilter,
)

app = TaskApiResolver()


# No return annotation (Powertools would validate and serialize the page again): page_response writes
# the body, each task serialized once to measure what fits; the 200 response's schema is named here.
@app.get(
    "/api/v1/tasks",
    operation_id="list_tasks",
    summary="List tasks, newest first",
    description=(
        "A page holds at most `limit` tasks, and fewer when their size would not fit in one response; "
        "`next_cursor` is present whenever more tasks match. Walking pages with `cursor` never repeats "
        "or skips a task, whatever is created meanwhile; with `offset`, advance it by the number of "
        "tasks received."
    ),
    responses={
        200: {
            "description": "One page of the matching tasks, their total, and next_cursor while more follow.",
            "content": {JSON: {"model": TaskPage}},
        },
        **error_responses(400, 500, 503),
    },
)
def list_tasks(
    status: Annotated[StatusFilter, Query()] = None,
    task_type: Annotated[TaskTypeFilter, Query()] = None,
    limit: Annotated[PageLimit, Query()] = DEFAULT_PAGE_SIZE,
    offset: Annotated[PageOffset, Query()] = 0,
    cursor: Annotated[PageCursor, Query()] = None,
    execute_after: Annotated[ExecuteAfterFilter, Query()] = None,
    execute_before: Annotated[ExecuteBeforeFilter, Query()] = None,
):
    filters = ListFilters(
        status=status, task_type=task_type, execute_after=execute_after, execute_before=execute_before
    )
    listing = service.list_tasks(filters, limit=limit, offset=offset, cursor=cursor, max_bytes=PAGE_BUDGET)
    return page_response(listing)


lambda_handler = api_entrypoint(app)
