"""GET /api/v1/stats: how many tasks by status, and how late the oldest due one is."""

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses
from atcore.models import TaskStats

app = TaskApiResolver()


@app.get(
    "/api/v1/stats",
    operation_id="get_stats",
    summary="Counts by status and the oldest due task",
    responses={200: {"description": "Exact counts, in constant time."}, **error_responses(500, 503)},
)
def get_stats() -> TaskStats:
    return service.task_stats()


lambda_handler = api_entrypoint(app)
