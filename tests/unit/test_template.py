"""template.yaml against the code: handlers exist, routes are the contract's, wiring is complete.

Static only: the template is parsed (CloudFormation short tags included) and the handler files
are read with `ast`, never imported; no sockets, no `sam` invocation.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from samcli.yamlhelper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = yaml_parse((ROOT / "template.yaml").read_text(encoding="utf-8"))
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBAL_FUNCTION: dict[str, Any] = TEMPLATE.get("Globals", {}).get("Function", {})
FUNCTIONS = {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}

# The API contract (docs/API.md): exactly these, each served by its own function.
CONTRACT_ROUTES = {
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/{id}"),
    ("DELETE", "/api/v1/tasks/{id}"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/health"),
    # v1.1
    ("POST", "/api/v1/tasks/batch"),
    ("PATCH", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/tasks/{id}/retry"),
    ("GET", "/api/v1/tasks/{id}/attempts"),
    ("GET", "/api/v1/stats"),
}
OPEN_ROUTES = {("GET", "/health")}  # reachable without credentials in every ApiAuth mode


def prop(function: str, key: str) -> Any:
    """A function's property, falling back to Globals.Function (as SAM does for scalars)."""
    return FUNCTIONS[function]["Properties"].get(key, GLOBAL_FUNCTION.get(key))


def env_vars(function: str) -> dict[str, Any]:
    """Globals' variables overlaid with the function's own (SAM merges the maps)."""
    merged = dict(GLOBAL_FUNCTION.get("Environment", {}).get("Variables", {}))
    merged.update(FUNCTIONS[function]["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


def api_events() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(function, METHOD, path, event properties) for every Api event."""
    return [
        (name, event["Properties"]["Method"].upper(), event["Properties"]["Path"], event["Properties"])
        for name, function in FUNCTIONS.items()
        for event in function["Properties"].get("Events", {}).values()
        if event["Type"] == "Api"
    ]


def top_level_callable_names(source: str) -> tuple[set[str], set[str]]:
    """(names bound at module level to a sync def or an assignment, names of async defs)."""
    bound: set[str] = set()
    async_defs: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.AsyncFunctionDef):
            async_defs.add(node.name)
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
    return bound, async_defs


def test_the_expected_functions_are_declared() -> None:
    assert set(FUNCTIONS) == {
        "CreateTaskFunction",
        "GetTaskFunction",
        "CancelTaskFunction",
        "ListTasksFunction",
        "HealthFunction",
        "CreateTasksBatchFunction",
        "UpdateTaskFunction",
        "RetryTaskFunction",
        "ListAttemptsFunction",
        "GetStatsFunction",
        "DispatcherFunction",
        "WorkerFunction",
        "MigrateFunction",
    }


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_code_uri_is_a_folder_of_the_repository(function: str) -> None:
    code_uri = prop(function, "CodeUri")
    assert isinstance(code_uri, str), f"{function}: CodeUri must be a local path, got {code_uri!r}"
    assert (ROOT / code_uri).is_dir(), f"{function}: CodeUri {code_uri} is not a folder"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_handler_resolves_to_a_top_level_function(function: str) -> None:
    # GIVEN Handler "module.func" (module may be dotted: "pkg.mod.func")
    handler = prop(function, "Handler")
    module, _, func = handler.rpartition(".")
    assert module and func, f"{function}: Handler {handler!r} is not module.function"
    source_file = ROOT / prop(function, "CodeUri") / (module.replace(".", "/") + ".py")
    assert source_file.is_file(), f"{function}: {source_file.relative_to(ROOT)} does not exist"

    # WHEN the file is parsed (not imported: importing may need the layer or a database)
    bound, async_defs = top_level_callable_names(source_file.read_text(encoding="utf-8"))

    # THEN `func` is defined at module level: `def func(...)` or `func = make_handler(...)`
    assert func not in async_defs, f"{function}: {func} is async; the Lambda Python runtime calls it synchronously"
    assert func in bound, f"{function}: {source_file.relative_to(ROOT)} defines no top-level {func}"


def test_api_routes_are_unique_and_exactly_the_contract() -> None:
    routes = [(method, path) for _, method, path, _ in api_events()]
    assert len(routes) == len(set(routes)), f"duplicate routes: {sorted(routes)}"
    assert set(routes) == CONTRACT_ROUTES


def test_each_api_function_serves_one_route_on_at_api() -> None:
    per_function: dict[str, int] = {}
    for function, _, _, properties in api_events():
        per_function[function] = per_function.get(function, 0) + 1
        assert properties.get("RestApiId") == {"Ref": "AtApi"}, f"{function}: not on AtApi"
    assert all(count == 1 for count in per_function.values()), per_function


def test_definition_body_methods_all_have_an_event_and_only_open_routes_lack_security() -> None:
    # A method in DefinitionBody without an Api event would have no integration: the deploy fails.
    body = RESOURCES["AtApi"]["Properties"]["DefinitionBody"]
    in_body = {(method.upper(), path) for path, item in body["paths"].items() for method in item}
    assert in_body <= CONTRACT_ROUTES
    # Lower case in both places, or SAM's MergeDefinitions keeps two separate method objects.
    assert all(method == method.lower() for item in body["paths"].values() for method in item)
    assert all(props["Method"] == props["Method"].lower() for *_, props in api_events())
    for route in CONTRACT_ROUTES - OPEN_ROUTES:
        method, path = route
        assert "security" in body["paths"].get(path, {}).get(method.lower(), {}), f"{route} is not secured"
    for method, path in OPEN_ROUTES:
        assert "security" not in body["paths"].get(path, {}).get(method.lower(), {})
    assert "Auth" not in RESOURCES["AtApi"]["Properties"], "auth is set per method in DefinitionBody"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_uses_the_common_layer(function: str) -> None:
    # SAM appends a function's own Layers to the global ones.
    layers = GLOBAL_FUNCTION.get("Layers", []) + FUNCTIONS[function]["Properties"].get("Layers", [])
    assert {"Ref": "CommonLayer"} in layers


def test_common_layer_is_built_by_its_makefile_for_x86_64() -> None:
    layer = RESOURCES["CommonLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    content = ROOT / layer["Properties"]["ContentUri"]
    assert (content / "python" / "atcore" / "__init__.py").is_file()
    assert (content / "requirements.txt").is_file()
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert re.search(r"^build-CommonLayer:", (content / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert all(prop(f, "Architectures") == ["x86_64"] for f in FUNCTIONS)
    assert all(prop(f, "Runtime") == "python3.13" for f in FUNCTIONS)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_logs_to_its_own_log_group_with_retention(function: str) -> None:
    log_group_ref = (FUNCTIONS[function]["Properties"].get("LoggingConfig") or {}).get("LogGroup")
    assert isinstance(log_group_ref, dict) and set(log_group_ref) == {"Ref"}, f"{function}: no LoggingConfig.LogGroup"
    log_group = RESOURCES[log_group_ref["Ref"]]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"].get("RetentionInDays"), f"{log_group_ref['Ref']} keeps logs forever"
    users = [
        f for f, r in FUNCTIONS.items() if r["Properties"].get("LoggingConfig", {}).get("LogGroup") == log_group_ref
    ]
    assert users == [function], f"{log_group_ref['Ref']} is shared by {users}"


def test_no_literal_secrets() -> None:
    rendered = json.dumps(TEMPLATE)  # parsed template: comments are not included
    assert "DB_PASSWORD" not in rendered
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY|API_KEY", re.IGNORECASE)
    for function in FUNCTIONS:
        for name, value in env_vars(function).items():
            if secretish.search(name) and name != "AT_HTTP_ALLOW_PRIVATE":
                assert not isinstance(value, str), f"{function}: {name} has a literal value"
    for name, parameter in TEMPLATE.get("Parameters", {}).items():
        if re.search(r"password|token", name, re.IGNORECASE):
            assert parameter.get("NoEcho") is True, f"parameter {name} must be NoEcho"
    # The secret RDS manages (Database=create) or the one given (Database=existing), never a value.
    assert env_vars("CreateTaskFunction")["DB_SECRET_ARN"] == {
        "Fn::If": [
            "CreateDatabase",
            {"Fn::GetAtt": ["DatabaseInstance", "MasterUserSecret.SecretArn"]},
            {"Ref": "DbSecretArn"},
        ]
    }


def test_task_queue_outlives_worker_retries_and_has_a_dead_letter_queue() -> None:
    queue = RESOURCES["TaskQueue"]["Properties"]
    worker_timeout = prop("WorkerFunction", "Timeout")
    assert queue["VisibilityTimeout"] >= 6 * worker_timeout
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["TaskDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    assert RESOURCES["TaskDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_worker_reports_partial_batch_failures() -> None:
    (event,) = FUNCTIONS["WorkerFunction"]["Properties"]["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["TaskQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_migrations_run_as_a_custom_resource_on_every_code_change() -> None:
    migrations = RESOURCES["DatabaseMigrations"]
    assert migrations["Type"] == "Custom::DatabaseMigrations"
    assert migrations["Properties"]["ServiceToken"] == {"Ref": "MigrateFunction.Alias"}
    assert migrations["Properties"]["CodeVersion"] == {"Ref": "MigrateFunction.Version"}
    assert (ROOT / prop("MigrateFunction", "CodeUri") / "migrations").is_dir()


def test_dispatcher_backpressure_is_sized_by_the_workers_the_template_configures() -> None:
    (event,) = FUNCTIONS["WorkerFunction"]["Properties"]["Events"].values()
    dispatcher = env_vars("DispatcherFunction")
    assert dispatcher["AT_WORKER_BATCH_SIZE"] == str(event["Properties"]["BatchSize"])
    assert dispatcher["AT_WORKER_MAX_CONCURRENCY"] == event["Properties"]["ScalingConfig"]["MaximumConcurrency"]


def test_an_attempt_fits_its_lease_and_the_worker_invocation() -> None:
    from atcore.execution import RECORDING_MARGIN_SECONDS, ExecutionSettings

    worker = env_vars("WorkerFunction")
    lease = float(worker.get("AT_LEASE_SECONDS", ExecutionSettings().lease_seconds))
    attempt = float(worker["AT_HTTP_TIMEOUT_SECONDS"])
    # A lease outlasts the whole invocation that started it, so recovery never races a live attempt.
    assert lease > prop("WorkerFunction", "Timeout")
    assert attempt + RECORDING_MARGIN_SECONDS <= prop("WorkerFunction", "Timeout")


def _statements(function: str) -> list[dict[str, Any]]:
    """The inline policy statements of a function, whichever branch of a condition they sit in."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Effect" in node and "Action" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(FUNCTIONS[function]["Properties"].get("Policies", []))
    return found


def test_the_worker_may_send_email_only_from_the_senders_the_stack_allows() -> None:
    ses = [s for s in _statements("WorkerFunction") if "ses" in json.dumps(s["Action"])]
    assert len(ses) == 1
    assert ses[0]["Action"] == "ses:SendEmail"  # no SendRawEmail: nothing sends raw MIME
    from_addresses = ses[0]["Condition"]["StringEquals"]["ses:FromAddress"]
    assert "EmailFrom" in json.dumps(from_addresses) and "AllowedEmailSenders" in json.dumps(from_addresses)
    assert "SendRawEmail" not in json.dumps(TEMPLATE)
