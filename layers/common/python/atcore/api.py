"""The HTTP edge shared by every API function: the resolver, the one place that maps errors
to responses, and the decorator stack of a Lambda entry point."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.shared.json_encoder import Encoder
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from atcore.errors import AtError, PayloadTooLarge
from atcore.models import MAX_BODY_BYTES, MAX_STORED_PAYLOAD_BYTES, TASK_LIST, ErrorBody, ErrorDetail, TaskListing
from atcore.observability import logger, metrics, tracer

JSON = "application/json"
# The request header of idempotent creates, as a Header(...) parameter's arguments.
IDEMPOTENCY_KEY_HEADER: dict[str, Any] = {
    "alias": "Idempotency-Key",
    "description": "1 to 255 printable ASCII characters: the same key and request within the TTL (24 h) "
    "answer what the first one did, with `Idempotent-Replayed: true`, and create nothing.",
}

# What each error status means, for the OpenAPI document; every error body is an ErrorBody.
ERROR_DESCRIPTIONS: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "Invalid request; `error` says why and `details` names each offending field.",
    HTTPStatus.NOT_FOUND: "No task with this id.",
    HTTPStatus.CONFLICT: "The task is in the wrong state for this request (the message says which).",
    HTTPStatus.UNPROCESSABLE_ENTITY: "The Idempotency-Key was already used with a different request.",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: (
        f"The request body exceeds {MAX_BODY_BYTES} bytes, or the payload would be stored as more than "
        f"{MAX_STORED_PAYLOAD_BYTES} bytes of JSON (numbers are stored written out: 1e300 takes 301 digits)."
    ),
    HTTPStatus.INTERNAL_SERVER_ERROR: "An unexpected error; the message reveals no internals.",
    HTTPStatus.SERVICE_UNAVAILABLE: "The database does not answer; retrying later may work.",
}


# --- response bodies, and what one Lambda response can carry ------------------------------------

# Lambda's limit on a synchronous invocation's response: the whole proxy dict as the runtime
# marshals it, where the body is a JSON string inside JSON, so its quotes and backslashes count twice.
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024  # 6,291,456 bytes
# Kept free of tasks: the rest of the proxy dict (status, headers, flags: under 200 bytes), a page's
# own text around its tasks (total, next_cursor: under 1.2 KB), and room for headers added later.
RESPONSE_MARGIN = 64 * 1024
PAGE_BUDGET = LAMBDA_RESPONSE_LIMIT - RESPONSE_MARGIN
# The largest single task, as a page measures it: its payload is at most MAX_STORED_PAYLOAD_BYTES of
# JSON as answered (a create rule), its other fields under 8 KiB (task_type has at most 50
# characters, error_message is cut at 1,000), and the envelope at most doubles JSON text (one more
# byte for a quote or backslash, three for a 3-byte U+2028). Under a third of PAGE_BUDGET, so the
# first task of a page always fits, as does every single-task answer (tests/integration/test_pages.py).
MAX_TASK_BYTES = 2 * (MAX_STORED_PAYLOAD_BYTES + 8 * 1024)


# One encoder for every body (json.dumps with cls= builds a new one per call: half the time of a small task).
_ENCODER = Encoder(separators=(",", ":"), ensure_ascii=False)


def dumps_json(value: Any) -> str:
    """Every JSON body: compact, and non-ASCII text as UTF-8, not \\uXXXX escapes (three times the size).
    The python3.13 runtime sends it on as UTF-8 too (its marshaller has ensure_ascii=False)."""
    return _ENCODER.encode(value)


def envelope_bytes(text: str) -> int:
    """Bytes the JSON text `text` takes as (part of) a body in the response the runtime sends: its
    UTF-8, plus what is escaped once more there. JSON text holds no raw control characters, so that
    is a quote or backslash (one byte more) and U+2028/U+2029 (3 bytes become the 6 of \\u2028:
    simplejson, the runtime interface client's encoder, escapes them even with ensure_ascii=False)."""
    escaped = text.count('"') + text.count("\\")
    if text.isascii():
        return len(text) + escaped
    return len(text.encode("utf-8")) + escaped + 3 * (text.count("\u2028") + text.count("\u2029"))


def page_response(listing: TaskListing) -> Response:
    """200 with the listing's tasks, newest first, as many as one response carries: each task is
    serialized once and measured; the first that would not fit ends the page (the first task always
    fits, see MAX_TASK_BYTES), and next_cursor continues after the last one shown."""
    fragments: list[str] = []
    used = 0
    for task in TASK_LIST.dump_python(listing.tasks, mode="json"):  # one call: faster than one per task
        fragment = dumps_json(task)
        size = envelope_bytes(fragment) + 1  # and its comma
        if fragments and used + size > PAGE_BUDGET:
            break
        fragments.append(fragment)
        used += size
    rest: dict[str, Any] = {"total": listing.total}
    if fragments and (listing.more or len(fragments) < len(listing.tasks)):
        rest["next_cursor"] = listing.cursor_after(listing.tasks[len(fragments) - 1])
    # TaskPage's shape, written around the fragments: {"tasks":[...],"total":N,"next_cursor":"..."}
    body = '{"tasks":[' + ",".join(fragments) + "]," + dumps_json(rest)[1:]
    return Response(status_code=HTTPStatus.OK, content_type=JSON, body=body)


def error_responses(*statuses: int, **descriptions: str) -> dict[int, OpenAPIResponse]:
    """The `responses=` of a route for these error statuses, e.g. error_responses(400, 404, 503);
    a keyword such as `not_found="..."` (an HTTPStatus name, lower case) rewords one."""
    custom: dict[int, str] = {HTTPStatus[name.upper()]: text for name, text in descriptions.items()}
    return {
        int(status): {
            "description": custom.get(status) or ERROR_DESCRIPTIONS[status],
            "content": {JSON: {"model": ErrorBody}},
        }
        for status in statuses
    }


def error_response(status: HTTPStatus, message: str, details: list[ErrorDetail] | None = None) -> Response:
    body = ErrorBody(error=message, details=details or None)
    return Response(status_code=status, content_type=JSON, body=body.model_dump_json(exclude_none=True))


def _reject_constant(name: str) -> float:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError("number is out of range", text, 0)
    return value


def parse_json_body(text: str) -> Any:
    """json.loads, minus what PostgreSQL's jsonb cannot hold or Python cannot bound; every
    failure surfaces as JSONDecodeError, which Powertools turns into a validation error."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise json.JSONDecodeError("JSON is nested too deeply", "", 0) from None
    except ValueError as exc:  # e.g. integers longer than Python's 4300-digit limit
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), "", 0) from None


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "payload") -> "payload"; ("body", "tasks", 3, "execute_at") -> "tasks[3].execute_at";
    # ("path", "task_id") -> "id"; ("query", "limit") -> "limit"
    if loc[:1] == ("path",):
        return "id"
    name = ""
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _describe(error: dict[str, Any]) -> ErrorDetail:
    loc = tuple(error.get("loc", ()))
    field = _field_name(loc)
    kind = error.get("type")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "malformed JSON")
        return ErrorDetail(field="body", message=f"request body is not valid JSON: {reason}")
    if kind == "value_error":  # a rule's own message; an item of a batch says which item
        message = str(error.get("ctx", {}).get("error", error.get("msg")))
        return ErrorDetail(field=field or "body", message=f"{field}: {message}" if "[" in field else message)
    if not field:  # the body itself: missing, empty, or not an object
        return ErrorDetail(field="body", message="request body must be a JSON object")
    if kind == "missing":
        return ErrorDetail(field=field, message=f"{field} is required")
    return ErrorDetail(field=field, message=f"{field}: {error.get('msg', 'invalid value')}")


def validation_error_response(errors: list[dict[str, Any]]) -> Response:
    details = [_describe(error) for error in errors]
    return error_response(HTTPStatus.BAD_REQUEST, details[0].message if details else "invalid request", details)


def _body_size(event: Mapping[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return len(base64.b64decode(body, validate=False))
        except (binascii.Error, ValueError):
            return len(body)
    return len(body.encode("utf-8", "surrogatepass"))


def _as_json_request(event: Mapping[str, Any]) -> dict[str, Any]:
    """Bodies are read as JSON whatever their Content-Type, as the original service did
    (curl -d sends application/x-www-form-urlencoded)."""
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "content-type"}
    headers["content-type"] = JSON
    multi = {k: v for k, v in (event.get("multiValueHeaders") or {}).items() if k.lower() != "content-type"}
    multi["content-type"] = [JSON]
    return {**event, "headers": headers, "multiValueHeaders": multi}


def created_response[Body: BaseModel](body: Body, replayed: bool) -> Response[Body]:
    """201 with `body`; a replay of an earlier answer (Idempotency-Key) says so in a header."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(status_code=HTTPStatus.CREATED, content_type=JSON, body=body, headers=headers)


def caller_of(event: Mapping[str, Any]) -> str | None:
    """Who calls, when API Gateway says: the IAM principal's ARN (IAM auth) or the API key's id."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    return identity.get("userArn") or identity.get("apiKeyId") or None


class TaskApiResolver(APIGatewayRestResolver):
    """Powertools' REST resolver with validation, plus the body-size limit, JSON-only bodies and the
    caller's identity on every log line."""

    def __init__(self, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        super().__init__(enable_validation=True, serializer=dumps_json, json_body_deserializer=parse_json_body)
        self.max_body_bytes = max_body_bytes
        self.exception_handler(RequestValidationError)(lambda exc: validation_error_response(list(exc.errors())))
        self.exception_handler(AtError)(self._domain_error)
        self.exception_handler(NotFoundError)(self._no_route)
        self.exception_handler(Exception)(self._unexpected_error)

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        """A path parameter takes whatever API Gateway matched: one segment, any characters.

        Powertools' own pattern takes only URI-safe and word characters, so `/api/v1/tasks/°` or
        `/api/v1/tasks/🙂` would match no route; here they reach validation and get its 400.
        """
        return re.compile(base_regex.format(re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule)))

    def caller(self) -> str | None:
        """The current request's caller (see caller_of): what a created task records as created_by."""
        return caller_of(self.current_event.raw_event)

    def resolve(self, event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
        if caller := caller_of(event):
            logger.append_keys(created_by=caller)  # on every line of this invocation (cleared after it)
        if event.get("body") is not None:
            if _body_size(event) > self.max_body_bytes:
                # Answered before routing, so an oversize body is never parsed.
                too_large = PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
                return {
                    "statusCode": int(too_large.status),
                    "headers": {"Content-Type": JSON},
                    "body": ErrorBody(error=too_large.message).model_dump_json(exclude_none=True),
                    "isBase64Encoded": False,
                }
            event = _as_json_request(event)
        return super().resolve(event, context)

    @staticmethod
    def _domain_error(exc: AtError) -> Response:
        if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            logger.warning("Request failed", extra={"error": exc.message, "status": int(exc.status)})
        return error_response(exc.status, exc.message)

    @staticmethod
    def _no_route(exc: NotFoundError) -> Response:
        # API Gateway routed the request to this function, so this is rare (e.g. a "/" inside {id});
        # without this handler the catch-all below would make it a 500.
        return error_response(HTTPStatus.NOT_FOUND, "no such resource")

    @staticmethod
    def _unexpected_error(exc: Exception) -> Response:
        logger.exception("Unhandled error")
        return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")


def api_entrypoint(app: TaskApiResolver) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The Lambda handler of an API function: correlation id, tracing and metrics around app.resolve."""

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return app.resolve(event, context)

    return lambda_handler
