"""GET /health: `OK` while the database answers, 503 otherwise."""

from aws_lambda_powertools.event_handler import Response

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint

app = TaskApiResolver()


@app.get("/health")
def health() -> Response[str]:
    service.check_health()
    return Response(status_code=200, content_type="text/plain", body="OK")


lambda_handler = api_entrypoint(app)
