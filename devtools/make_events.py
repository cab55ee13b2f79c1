"""Write events/*.json: API Gateway REST (v1 proxy) events, one per function and bad-input case,
the EventBridge schedule event of the dispatcher and an SQS batch for the worker.

Run `python -m devtools.make_events` after changing the cases; the files are committed so
`sam local invoke -e events/<name>.json` and the tests use the same events.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
TASK_QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:at-TaskQueue"
# Fixed ids and times keep the generated files identical from run to run.
_EVENT_NAMESPACE = uuid.UUID("5b0c7e52-3f5e-4d7a-9a51-6a1f0c2d9e10")
_EVENT_EPOCH_MS = 1893456000000  # 2030-01-01T00:00:00Z

# name: (method, resource, path, path parameters, query, body)
CASES: dict[str, tuple[str, str, str, dict | None, dict | None, str | None]] = {
    "create_task": (
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        None,
        json.dumps(
            {
                "execute_at": "2099-01-01T12:00:00Z",
                "task_type": "send_email",
                "payload": {"to": "user@example.com", "subject": "Reminder"},
                "max_attempts": 3,
            }
        ),
    ),
    "create_task_malformed_json": ("POST", "/api/v1/tasks", "/api/v1/tasks", None, None, '{"execute_at": '),
    "create_task_past": (
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        None,
        json.dumps({"execute_at": "2001-01-01T00:00:00Z", "task_type": "send_email", "payload": {}}),
    ),
    "create_task_no_timezone": (
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        None,
        json.dumps({"execute_at": "2099-01-01T12:00:00", "task_type": "send_email", "payload": {}}),
    ),
    "create_task_null_payload": (
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        None,
        json.dumps({"execute_at": "2099-01-01T12:00:00Z", "task_type": "send_email", "payload": None}),
    ),
    "create_task_long_type": (
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        None,
        json.dumps({"execute_at": "2099-01-01T12:00:00Z", "task_type": "x" * 51, "payload": {}}),
    ),
    "get_task": ("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/1", {"id": "1"}, None, None),
    "get_task_bad_id": ("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/-1", {"id": "-1"}, None, None),
    "cancel_task": ("DELETE", "/api/v1/tasks/{id}", "/api/v1/tasks/1", {"id": "1"}, None, None),
    "cancel_task_bad_id": ("DELETE", "/api/v1/tasks/{id}", "/api/v1/tasks/1e3", {"id": "1e3"}, None, None),
    "list_tasks": (
        "GET",
        "/api/v1/tasks",
        "/api/v1/tasks",
        None,
        {"status": "pending", "task_type": "send_email", "limit": "20", "offset": "0"},
        None,
    ),
    "list_tasks_bad_limit": ("GET", "/api/v1/tasks", "/api/v1/tasks", None, {"limit": "abc"}, None),
    "list_tasks_bad_status": ("GET", "/api/v1/tasks", "/api/v1/tasks", None, {"status": "done"}, None),
    "health": ("GET", "/health", "/health", None, None, None),
    "create_tasks_batch": (
        "POST",
        "/api/v1/tasks/batch",
        "/api/v1/tasks/batch",
        None,
        None,
        json.dumps(
            {
                "tasks": [
                    {
                        "execute_at": "2099-01-01T12:00:00Z",
                        "task_type": "send_sms",
                        "payload": {"phone_number": "+15551234567", "message": "Your table is ready"},
                    },
                    {
                        "execute_at": "2099-01-01T12:05:00Z",
                        "task_type": "http_callback",
                        "payload": {"url": "https://example.com/hooks/reminder"},
                        "max_attempts": 5,
                    },
                ]
            }
        ),
    ),
    "update_task": (
        "PATCH",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/1",
        {"id": "1"},
        None,
        json.dumps({"execute_at": "2099-01-02T12:00:00Z"}),
    ),
    "update_task_empty": ("PATCH", "/api/v1/tasks/{id}", "/api/v1/tasks/1", {"id": "1"}, None, "{}"),
    "retry_task": ("POST", "/api/v1/tasks/{id}/retry", "/api/v1/tasks/1/retry", {"id": "1"}, None, None),
    "list_attempts": ("GET", "/api/v1/tasks/{id}/attempts", "/api/v1/tasks/1/attempts", {"id": "1"}, None, None),
    "get_stats": ("GET", "/api/v1/stats", "/api/v1/stats", None, None, None),
}


def api_event(
    method: str, resource: str, path: str, path_params: dict | None, query: dict | None, body: str | None
) -> dict:
    headers = {
        "Accept": "*/*",
        "Host": "127.0.0.1:8080",
        "User-Agent": "curl/8.5.0",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Port": "8080",
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "123456",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "01/Jan/2030:00:00:00 +0000",
            "path": f"/Prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "Prod",
            "domainPrefix": "localhost",
            "requestTimeEpoch": 1893456000000,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "curl/8.5.0"},
            "domainName": "localhost",
            "apiId": "1234567890",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def scheduled_event() -> dict:
    """What the DispatcherFunction's EveryMinute rule (EventBridge, rate(1 minute)) delivers."""
    return {
        "version": "0",
        "id": str(uuid.uuid5(_EVENT_NAMESPACE, "dispatcher")),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": "2030-01-01T00:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/at-DispatcherFunctionEveryMinute-1A2B3C4D5E6F"],
        "detail": {},
    }


def sqs_record(
    message_id: str,
    receipt_handle: str,
    body: str,
    attributes: dict[str, str],
    message_attributes: dict | None = None,
    md5_of_body: str | None = None,
    event_source_arn: str = TASK_QUEUE_ARN,
) -> dict:
    """One record of the event Lambda's SQS event source mapping delivers (field names as Lambda spells them).

    message_attributes are in the SQS API's shape (as ReceiveMessage returns them) and are converted here.
    """
    converted = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(value["BinaryValue"]).decode() if "BinaryValue" in value else None,
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": [base64.b64encode(v).decode() for v in value.get("BinaryListValues", [])],
            "dataType": value["DataType"],
        }
        for name, value in (message_attributes or {}).items()
    }
    return {
        "messageId": message_id,
        "receiptHandle": receipt_handle,
        "body": body,
        "attributes": attributes,
        "messageAttributes": converted,
        "md5OfBody": md5_of_body or hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": event_source_arn,
        "awsRegion": event_source_arn.split(":")[3],
    }


def records_from_received(messages: list[dict], event_source_arn: str) -> dict:
    """The event Lambda's SQS event source mapping builds from messages ReceiveMessage returned."""
    return {
        "Records": [
            sqs_record(
                m["MessageId"],
                m["ReceiptHandle"],
                m["Body"],
                m["Attributes"],
                m.get("MessageAttributes"),
                m["MD5OfBody"],
                event_source_arn,
            )
            for m in messages
        ]
    }


def task_message_record(task_id: int, attempt: int) -> dict:
    """A TaskQueue message as the dispatcher sends it ({"id", "attempt"}), received for the first time."""
    message_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"task-{task_id}-{attempt}"))
    # Real receipt handles are opaque base64 strings of a few hundred characters.
    receipt_handle = "AQEB" + base64.b64encode(hashlib.sha512(message_id.encode()).digest() * 2).decode()
    sent_ms = _EVENT_EPOCH_MS + task_id
    attributes = {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": str(sent_ms),
        # The dispatcher sends with its execution role: "<role id>:<function name>".
        "SenderId": "AROAEXAMPLEROLEID1234:at-DispatcherFunction-1A2B3C4D5E6F",
        "ApproximateFirstReceiveTimestamp": str(sent_ms + 12),
    }
    return sqs_record(message_id, receipt_handle, json.dumps({"id": task_id, "attempt": attempt}), attributes)


def worker_event() -> dict:
    """What the WorkerFunction's TaskQueue event source mapping delivers: a batch of two task messages."""
    return {"Records": [task_message_record(1, 1), task_message_record(2, 1)]}


def main() -> None:
    EVENTS_DIR.mkdir(exist_ok=True)
    for name, case in CASES.items():
        (EVENTS_DIR / f"{name}.json").write_text(json.dumps(api_event(*case), indent=2) + "\n")
    (EVENTS_DIR / "dispatcher.json").write_text(json.dumps(scheduled_event(), indent=2) + "\n")
    (EVENTS_DIR / "worker.json").write_text(json.dumps(worker_event(), indent=2) + "\n")


if __name__ == "__main__":
    main()
