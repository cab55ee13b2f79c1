"""docs/openapi.json against the code and the contract (docs/API.md): generated from the functions' resolvers,
up to date, and listing every status code the contract names for each operation."""

from __future__ import annotations

import json
import tomllib

import pytest
from samcli.yamlhelper import yaml_parse

from devtools import openapi
from devtools.support.functions import ROOT

# The API contract (docs/API.md): every status each operation may answer.
CONTRACT_STATUSES = {
    ("post", "/api/v1/tasks"): {201, 400, 409, 413, 422, 500, 503},
    ("post", "/api/v1/tasks/batch"): {201, 400, 409, 413, 422, 500, 503},
    ("patch", "/api/v1/tasks/{id}"): {200, 400, 404, 409, 413, 500, 503},
    ("post", "/api/v1/tasks/{id}/retry"): {200, 400, 404, 409, 500, 503},
    ("get", "/api/v1/tasks/{id}/attempts"): {200, 400, 404, 500, 503},
    ("get", "/api/v1/stats"): {200, 500, 503},
    ("get", "/api/v1/tasks/{id}"): {200, 400, 404, 500, 503},
    ("delete", "/api/v1/tasks/{id}"): {200, 400, 404, 500, 503},
    ("get", "/api/v1/tasks"): {200, 400, 500, 503},
    ("get", "/health"): {200, 503},
}
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi.build_document()


def operations(document: dict) -> dict[tuple[str, str], dict]:
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


def test_docs_openapi_json_is_up_to_date(document):
    committed = openapi.DOCUMENT.read_text(encoding="utf-8")
    assert committed == openapi.render(document), "docs/openapi.json is out of date: run `make openapi`"


def test_check_fails_when_the_file_differs(tmp_path, document):
    stale = tmp_path / "openapi.json"
    stale.write_text(openapi.render(document).replace("AT API", "AT API (stale)"))
    assert openapi.main(["--check", "--output", str(stale)]) == 1
    assert openapi.main(["--output", str(stale)]) == 0
    assert openapi.main(["--check", "--output", str(stale)]) == 0


def test_title_and_version(document):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert document["info"]["title"] == "AT API" and document["info"]["version"] == version
    assert document["openapi"].startswith("3.")


def test_operations_are_the_templates_routes(document):
    template = yaml_parse((ROOT / "template.yaml").read_text(encoding="utf-8"))
    routes = {
        (event["Properties"]["Method"].lower(), event["Properties"]["Path"])
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "Api"
    }
    assert set(operations(document)) == routes == set(CONTRACT_STATUSES)


@pytest.mark.parametrize("operation", sorted(CONTRACT_STATUSES), ids=" ".join)
def test_every_contract_status_is_documented(document, operation):
    responses = operations(document)[operation]["responses"]
    assert CONTRACT_STATUSES[operation] <= {int(status) for status in responses}
    # Powertools' default 422 (validation) is not documented: AT answers 400. A 422 is only AT's own.
    assert responses.get("422", {}).get("description") != "Validation Error"
    assert ("422" in responses) == (422 in CONTRACT_STATUSES[operation])
    for status, response in responses.items():
        if int(status) >= 400:
            assert response["content"] == {"application/json": {"schema": ERROR_SCHEMA}}, status
        assert response["description"]


def test_success_bodies(document):
    ops = operations(document)
    envelope = {"$ref": "#/components/schemas/TaskEnvelope"}
    assert ops["post", "/api/v1/tasks"]["responses"]["201"]["content"]["application/json"]["schema"] == envelope
    assert ops["get", "/api/v1/tasks/{id}"]["responses"]["200"]["content"]["application/json"]["schema"] == envelope
    assert ops["delete", "/api/v1/tasks/{id}"]["responses"]["200"]["content"]["application/json"]["schema"] == envelope
    page = ops["get", "/api/v1/tasks"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert page == {"$ref": "#/components/schemas/TaskPage"}
    assert ops["get", "/health"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string", "enum": ["OK"]}}
    }


def test_parameters_say_what_a_client_may_send(document):
    ops = operations(document)
    for method in ("get", "delete"):
        [task_id] = ops[method, "/api/v1/tasks/{id}"]["parameters"]
        assert (task_id["name"], task_id["in"], task_id["required"]) == ("id", "path", True)
        assert task_id["schema"] | {"title": None} == {
            "type": "integer",
            "format": "int64",
            "minimum": 1,
            "title": None,
        }
    query = {p["name"]: p for p in ops["get", "/api/v1/tasks"]["parameters"]}
    assert set(query) == {"status", "task_type", "limit", "offset", "cursor", "execute_after", "execute_before"}
    assert all(p["in"] == "query" and not p["required"] and p["allowEmptyValue"] for p in query.values())
    assert query["status"]["schema"]["enum"] == ["pending", "processing", "completed", "failed", "cancelled"]
    assert query["task_type"]["schema"]["maxLength"] == 50
    assert (
        query["limit"]["schema"]["minimum"] == 0 and "maximum" not in query["limit"]["schema"]
    )  # clamped, not refused
    assert query["offset"]["schema"]["minimum"] == 0
    assert query["cursor"]["schema"]["type"] == "string" and "next_cursor" in query["cursor"]["schema"]["description"]
    for name in ("execute_after", "execute_before"):
        assert query[name]["schema"]["format"] == "date-time"


def test_pages_document_next_cursor_and_short_pages(document):
    page = document["components"]["schemas"]["TaskPage"]
    assert set(page["required"]) == {"tasks", "total"}  # next_cursor only while more tasks follow
    assert page["properties"]["next_cursor"]["type"] == "string"
    assert "fewer than `limit`" in page["properties"]["next_cursor"]["description"]
    listing = operations(document)["get", "/api/v1/tasks"]
    assert "fewer when their size would not fit" in listing["description"]


def test_task_schema_omits_unset_optionals(document):
    task = document["components"]["schemas"]["Task"]
    assert "completed_at" not in task["required"] and "error_message" not in task["required"]
    assert task["properties"]["completed_at"] == task["properties"]["completed_at"] | {
        "type": "string",
        "format": "date-time",
    }
    body = document["components"]["schemas"]["CreateTaskRequest"]
    assert set(body["required"]) == {"execute_at", "task_type", "payload"}
    assert body["properties"]["payload"]["not"] == {"type": "null"}


def test_only_referenced_schemas_and_exact_numbers(document):
    text = json.dumps(document)
    for name in document["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text, name
    assert "ValidationError" not in document["components"]["schemas"]
    floats: list[float] = []
    json.loads(text, parse_float=lambda s: floats.append(float(s)))
    assert floats == []  # bounds are integers, written exactly
