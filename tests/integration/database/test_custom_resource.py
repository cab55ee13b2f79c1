"""MigrateFunction as a CloudFormation custom resource: migrate on Create/Update, keep the data on
Delete, report to CloudFormation's pre-signed https URL only."""

from __future__ import annotations

import json
import uuid

import pytest

import migrate
from devtools.support.database import table_exists
from devtools.support.functions import lambda_context

ALL_VERSIONS = [path.stem for path in migrate.migration_files()]
TABLE = "scheduled_tasks"


# --- the custom resource ----------------------------------------------------------------------


def cfn_event(request_type: str, **extra) -> dict:
    return {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:at-migrate",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/at/0a1b2c3d",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": {},
        **extra,
    }


@pytest.fixture
def cfn_responses(monkeypatch) -> list[dict]:
    sent: list[dict] = []

    def capture(event, context, status, reason=""):
        sent.append({"status": status, "reason": reason, "request_id": event["RequestId"]})

    monkeypatch.setattr(migrate, "_send_cfn_response", capture)
    return sent


def test_custom_resource_create_then_update_without_response_url(database_server, empty_db, conn_to, db_env):
    db_env(database_server.env(empty_db))
    assert migrate.lambda_handler(cfn_event("Create"), lambda_context()) == {"applied": ALL_VERSIONS}
    assert table_exists(conn_to(empty_db), TABLE)
    assert migrate.lambda_handler(cfn_event("Update"), lambda_context()) == {"applied": []}


def test_custom_resource_reports_success_to_cloudformation(database_server, empty_db, conn_to, db_env, cfn_responses):
    db_env(database_server.env(empty_db))
    event = cfn_event("Create", ResponseURL="https://cloudformation-custom-resource-response.example/abc")
    assert migrate.lambda_handler(event, lambda_context()) == {"applied": ALL_VERSIONS}
    assert cfn_responses == [{"status": "SUCCESS", "reason": "", "request_id": event["RequestId"]}]
    assert table_exists(conn_to(empty_db), TABLE)


def test_custom_resource_reports_failure_to_cloudformation(database_server, db_env, cfn_responses):
    db_env(database_server.env(f"at_missing_{uuid.uuid4().hex[:8]}"))  # a database that does not exist
    event = cfn_event("Create", ResponseURL="https://cloudformation-custom-resource-response.example/abc")
    assert migrate.lambda_handler(event, lambda_context()) == {"applied": []}
    assert len(cfn_responses) == 1
    assert cfn_responses[0]["status"] == "FAILED"
    assert cfn_responses[0]["reason"].startswith("migration failed: ")


def test_custom_resource_failure_without_response_url_raises(database_server, db_env):
    db_env(database_server.env(f"at_missing_{uuid.uuid4().hex[:8]}"))
    with pytest.raises(Exception):  # noqa: B017 - any error: the invocation must fail visibly
        migrate.lambda_handler(cfn_event("Create"), lambda_context())


def test_custom_resource_delete_keeps_the_data_and_needs_no_database(db_env, cfn_responses):
    db_env({"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_CONNECT_TIMEOUT": "1"})  # nothing listens there
    event = cfn_event(
        "Delete",
        ResponseURL="https://cloudformation-custom-resource-response.example/abc",
        PhysicalResourceId="at-database-migrations",
    )
    assert migrate.lambda_handler(event, lambda_context()) == {"applied": []}
    assert [r["status"] for r in cfn_responses] == ["SUCCESS"]


class _Opened:
    def __init__(self, log: list, request, timeout):
        log.append((request, timeout))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/response", "file:///etc/passwd", "ftp://example.com/x", ""])
def test_send_cfn_response_refuses_anything_but_https(monkeypatch, url):
    opened: list = []
    monkeypatch.setattr(migrate.urllib.request, "urlopen", lambda request, timeout: _Opened(opened, request, timeout))
    with pytest.raises(ValueError, match="https"):
        migrate._send_cfn_response(cfn_event("Create", ResponseURL=url), lambda_context(), "SUCCESS")
    assert opened == []


def test_send_cfn_response_puts_the_documented_body(monkeypatch):
    opened: list = []
    monkeypatch.setattr(migrate.urllib.request, "urlopen", lambda request, timeout: _Opened(opened, request, timeout))
    url = "https://cloudformation-custom-resource-response.example/path?sig=1"
    event = cfn_event("Create", ResponseURL=url)
    migrate._send_cfn_response(event, lambda_context(), "FAILED", reason="migration failed: RuntimeError")
    [(request, timeout)] = opened
    assert request.full_url == url and request.get_method() == "PUT"
    assert request.get_header("Content-type") == ""  # the presigned S3 URL is signed without one
    assert 0 < timeout <= 30
    assert json.loads(request.data) == {
        "Status": "FAILED",
        "Reason": "migration failed: RuntimeError",
        "PhysicalResourceId": "at-database-migrations",
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": "DatabaseMigrations",
    }
