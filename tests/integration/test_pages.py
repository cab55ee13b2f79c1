"""What the API functions answer, as Lambda carries it: through the real handlers, against the
real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from conftest import invoke_raw, load_event

FUTURE = "2099-01-01T12:00:00Z"


def body_of(payload_json: str, task_type: str = "t") -> str:
    """A create body around a payload written as JSON text (so it can be the tersest form)."""
    return '{"execute_at":"' + FUTURE + '","task_type":' + json.dumps(task_type) + ',"payload":' + payload_json + "}"


def create_raw(body: str) -> dict:
    return invoke_raw("create_task", load_event("create_task", body=body))


def list_raw(**query: str) -> dict:
    event = load_event("list_tasks", queryStringParameters=query or None,
                       multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None)
    return invoke_raw("list_tasks", event)


def id_event(name: str, task_id: int) -> dict:
    return load_event(name) | {"path": f"/api/v1/tasks/{task_id}", "pathParameters": {"id": str(task_id)}}


# --- UTF-8, not \uXXXX ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["é", "привет", "🙂", "\u2028", "日本語"])
def test_non_ascii_is_answered_as_utf8_and_parses_to_the_same_payload(sql, text):
    payload = {"text": text * 3, text: [text]}
    created = create_raw(body_of(json.dumps(payload), task_type=text))
    task_id = json.loads(created["body"])["task"]["id"]
    responses = [created, invoke_raw("get_task", id_event("get_task", task_id)), list_raw(task_type=text)]
    responses.append(invoke_raw("cancel_task", id_event("cancel_task", task_id)))
    for response in responses:
        assert response["statusCode"] in (200, 201)
        assert text in response["body"] and "\\u" not in response["body"]
        answer = json.loads(response["body"])
        task = answer["task"] if "task" in answer else answer["tasks"][0]
        assert task["payload"] == payload and task["task_type"] == text
