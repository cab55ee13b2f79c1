"""GET /health: `OK` while the database answers, 503 otherwise."""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

from atcore import service
from atcore.api import TaskApiResolver, api_entrypoint, error_responses

app = TaskApiResolver()

_OK: OpenAPIResponse = {
    "description": "The database answers.",
    "content": {"text/plain": {"schema": {"type": "string", "enum": ["OK"]}}},
}


@app.get(
    "/health",
    operation_id="health",
    summary="Check the API and its database",
    responses={200: _OK, **error_responses(500, 503)},
)
def health() -> Response[str]:
    service.check_health()
    return Response(status_code=200, content_type="text/plain", body="OK")


lambda_handler = api_entrypoint(app)
