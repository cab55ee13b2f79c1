"""template.yaml as CloudFormation would see it, for every combination of the deploy parameters.

SAM's translator (samtranslator, offline) turns the template into plain CloudFormation once; the
translation does not depend on parameter values (checked on a sample below), so each combination
is then *resolved* from it here as CloudFormation would: conditions evaluated, resources and
outputs whose condition is false dropped, Fn::If branches chosen, AWS::NoValue removed, parameter
Refs replaced. For each combination of Database x ApiAuth x SnapStart x ApiTracing x
ApiReservedConcurrency x CreateApiGatewayAccountRole (x InterfaceEndpoints x NatGateways when
Database=create) it checks:

- every environment variable a function's code needs is set for it, none it sets is unread, and
  the password is never among them;
- every route of the contract reaches its own function, through the alias SnapStart publishes, with
  the authentication ApiAuth asks for (none on GET /health);
- every function's role grants only AWS actions its code calls, on named resources;
- Database=create: the functions reach PostgreSQL only through RDS Proxy, each through a security
  group of its own kind; with InterfaceEndpoints only the worker (and the migrations, for S3) reach
  the Internet; only the dispatcher can LISTEN (the one statement that pins a proxy connection).

What each function's code "needs", "reads" and "calls" is found statically: the modules its handler
can import (every import statement in the handler and, transitively, in the layer's atcore modules
it reaches, lazy imports included, and every module of a package that imports its modules by name
with importlib: a superset of what one invocation runs), the DB_/AT_/TASK_
names that appear as string literals there, and the boto3 methods called there by name. That can
miss a name built at run time and over-counts code a function never reaches; it cannot prove the
template deploys: no AWS account is used (see README, "Deploy from nothing").
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from samcli.yamlhelper import yaml_parse

from devtools.support.template import api_routes

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common" / "python"
SOURCE: dict[str, Any] = yaml_parse((ROOT / "template.yaml").read_text(encoding="utf-8"))
PARAMETERS: dict[str, dict[str, Any]] = SOURCE["Parameters"]

API_FUNCTIONS = {route.function: (route.method, route.path) for route in api_routes()}  # from template.yaml
OTHER_FUNCTIONS = ("DispatcherFunction", "WorkerFunction", "MigrateFunction")
FUNCTIONS = (*API_FUNCTIONS, *OTHER_FUNCTIONS)
OPEN_ROUTES = {("GET", "/health")}

# --------------------------------------------------------------------------------- combinations

AXES_EVERY_MODE = {
    "Database": ["create", "existing"],
    "ApiAuth": ["IAM", "API_KEY", "NONE"],
    "SnapStart": ["false", "true"],
    "ApiTracing": ["false", "true"],
    "ApiReservedConcurrency": ["0", "20"],
    "CreateApiGatewayAccountRole": ["true", "false"],
}
AXES_CREATE_ONLY = {"InterfaceEndpoints": ["false", "true"], "NatGateways": ["1", "2"]}
# What Database=existing must be given (its Rules refuse them empty).
EXISTING = {
    "DbHost": "at-proxy.proxy-abc.us-east-1.rds.amazonaws.com",
    "DbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:at-db-AbCdEf",
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
    "SecurityGroupIds": "sg-0123456789abcdef0",
}


def combinations() -> list[dict[str, str]]:
    found = []
    for values in itertools.product(*AXES_EVERY_MODE.values()):
        combo = dict(zip(AXES_EVERY_MODE, values, strict=True))
        if combo["Database"] == "existing":
            found.append(combo | EXISTING)
            continue
        for extra in itertools.product(*AXES_CREATE_ONLY.values()):
            found.append(combo | dict(zip(AXES_CREATE_ONLY, extra, strict=True)))
    return found


COMBINATIONS = combinations()


def combo_id(combo: dict[str, str]) -> str:
    keys = [*AXES_EVERY_MODE, *AXES_CREATE_ONLY]
    return "-".join(f"{k}={combo[k]}" for k in keys if k in combo)


# --------------------------------------------------------------------------------- translation


class _NoManagedPolicies:
    """The template names managed policies by ARN only, so SAM needs no IAM look-up."""

    def load(self) -> dict[str, str]:
        return {}


def _packaged(template: dict[str, Any]) -> dict[str, Any]:
    """CodeUri/ContentUri as `sam package` leaves them (S3 URIs); the translator requires that."""
    template = copy.deepcopy(template)
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://at-offline/{properties[key].strip('/')}.zip"
    return template


def translate(parameters: dict[str, str]) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    return transform(_packaged(SOURCE), dict(parameters), _NoManagedPolicies())


@pytest.fixture(scope="module", autouse=True)
def _region(monkeypatch_module):
    monkeypatch_module.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@functools.cache
def translated() -> dict[str, Any]:
    return translate({})


# --------------------------------------------------------------------------------- resolution

NO_VALUE = object()


def parameter_values(combo: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in PARAMETERS.items():
        value = str(combo.get(name, spec.get("Default", "")))
        values[name] = value.split(",") if spec["Type"] == "CommaDelimitedList" else value
    return values | {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
                     "AWS::StackName": "at", "AWS::URLSuffix": "amazonaws.com"}  # fmt: skip


class Resolved:
    """One combination of the translated template, resolved."""

    def __init__(self, template: dict[str, Any], combo: dict[str, str]) -> None:
        self.combo = combo
        self.params = parameter_values(combo)
        self._conditions = template.get("Conditions", {})
        self.conditions: dict[str, bool] = {}
        self.resources = {
            name: self.value(resource)
            for name, resource in template["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }
        self.outputs = {
            name: output for name, output in template.get("Outputs", {}).items()
            if "Condition" not in output or self.condition(output["Condition"])
        }  # fmt: skip

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self._evaluate(self._conditions[name]))
        return self.conditions[name]

    def _evaluate(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Fn::Equals":
                left, right = (self.value(part) for part in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self._evaluate(arg[0])
            if key == "Fn::And":
                return all(self._evaluate(part) for part in arg)
            if key == "Fn::Or":
                return any(self._evaluate(part) for part in arg)
            if key == "Condition":
                return self.condition(arg)
        return self.value(node)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in self.params:
                    return self.params[arg]
                return node  # a resource
            if key == "Fn::Join":
                separator, parts = arg
                parts = self.value(parts)
                if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
                    return separator.join(parts)
                return {key: [separator, parts]}
            if key == "Fn::Split":
                separator, text = arg
                text = self.value(text)
                return text.split(separator) if isinstance(text, str) else {key: [separator, text]}
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not NO_VALUE}

    def functions(self) -> dict[str, dict[str, Any]]:
        return {n: r["Properties"] for n, r in self.resources.items() if r["Type"] == "AWS::Lambda::Function"}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {n: r.get("Properties", {}) for n, r in self.resources.items() if r["Type"] == kind}


@functools.cache
def _resolved(key: str) -> Resolved:
    return Resolved(translated(), json.loads(key))


def resolved(combo: dict[str, str]) -> Resolved:
    return _resolved(json.dumps(combo, sort_keys=True))


def refs(node: Any) -> set[str]:
    """Every resource named by Ref, Fn::GetAtt or ${...} in Fn::Sub anywhere under node."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str) and not value.startswith("AWS::"):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {
                    name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text) if not name.startswith("AWS::")
                }
                if isinstance(value, list):
                    found |= refs(value[1])
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


# --------------------------------------------------------------------------------- what the code does


def _handler_file(function: str) -> Path:
    properties = SOURCE["Resources"][function]["Properties"]
    module = properties["Handler"].rpartition(".")[0]
    return ROOT / properties["CodeUri"] / f"{module.replace('.', '/')}.py"


def _layer_module(name: str) -> Path | None:
    base = LAYER / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(LAYER).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _imports(path: Path) -> set[Path]:
    """Layer modules this file imports anywhere (top level or inside functions)."""
    package = _module_name(path) if path.is_relative_to(LAYER) else ""
    if path.name != "__init__.py" and package:
        package = package.rpartition(".")[0]
    found: set[Path] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if path.is_relative_to(LAYER) and any(
        isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree)
    ):  # a registry that imports its package's modules by name (atcore.executors): all of them
        found |= {p for p in path.parent.glob("*.py") if p != path}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*parent, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            while name:  # importing a.b.c imports a and a.b as well
                if (module := _layer_module(name)) is not None:
                    found.add(module)
                name = name.rpartition(".")[0]
    return found


@functools.cache
def reachable(function: str) -> frozenset[Path]:
    """The handler file and every layer module it can import, transitively."""
    seen: set[Path] = set()
    todo = [_handler_file(function)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path) - seen)
    return frozenset(seen)


ENV_NAME = re.compile(r"^(?:DB|AT|TASK)_[A-Z0-9_]+$")


@functools.cache
def variables_read(function: str) -> frozenset[str]:
    """DB_*/AT_*/TASK_* string literals in the function's reachable code."""
    names: set[str] = set()
    for path in reachable(function):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.match(node.value):
                names.add(node.value)
    return frozenset(names)


# boto3 methods the code calls, by name, and the IAM action each needs.
CALLS = {
    "get_secret_value": "secretsmanager:GetSecretValue",
    "send_message_batch": "sqs:SendMessage",  # authorized as SendMessage
    "send_message": "sqs:SendMessage",
    "send_email": "ses:SendEmail",
    "publish": "sns:Publish",
}


@functools.cache
def actions_called(function: str) -> frozenset[str]:
    found: set[str] = set()
    for path in reachable(function):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CALLS:
                found.add(CALLS[node.func.attr])
    return frozenset(found)


# --------------------------------------------------------------------------------- expectations

# Set by the template and needed on AWS: (name, may it be empty?). A name here that no reachable code
# reads fails the test (the table would be stale).
EVERY_FUNCTION = {"DB_HOST": False, "DB_PORT": False, "DB_NAME": False, "DB_SSLMODE": False,
                  "DB_SSLROOTCERT": True, "DB_SECRET_ARN": False}  # fmt: skip
REQUIRED = {name: dict(EVERY_FUNCTION) for name in FUNCTIONS}
REQUIRED["DispatcherFunction"] |= {"TASK_QUEUE_URL": False, "AT_WORKER_MAX_CONCURRENCY": False,
                                   "AT_WORKER_BATCH_SIZE": False, "AT_RETENTION_DAYS": False}  # fmt: skip
REQUIRED["WorkerFunction"] |= {"AT_AWS_DELIVERY": False, "AT_HTTP_TIMEOUT_SECONDS": False, "AT_EMAIL_FROM": True,
                               "AT_SQS_DEFAULT_QUEUE_URL": True, "AT_HTTP_ALLOW_PRIVATE": False,
                               "AT_EMAIL_ALLOWED_FROM": True, "AT_WEBHOOK_SECRET_ARN": True}  # fmt: skip
# Read with a default in the code: the template may leave them unset.
OPTIONAL = {"DB_CONNECT_TIMEOUT", "DB_STATEMENT_TIMEOUT_MS", "DB_USER", "AT_DISPATCH_RUN_SECONDS", "AT_LEASE_SECONDS",
            "AT_CLAIM_BATCH_SIZE", "AT_RETRY_BASE_SECONDS", "AT_RETRY_MAX_SECONDS", "AT_HANDOFF_SECONDS",
            "AT_WORKER_MAX_CONCURRENCY", "AT_WORKER_BATCH_SIZE", "AT_OUTBOX_DIR", "AT_AWS_DELIVERY",
            "AT_HTTP_TIMEOUT_SECONDS", "AT_HTTP_ALLOW_PRIVATE", "AT_EMAIL_FROM", "AT_SQS_DEFAULT_QUEUE_URL",
            "AT_RETENTION_DAYS", "AT_EMAIL_ALLOWED_FROM", "AT_IDEMPOTENCY_TTL_HOURS", "AT_WEBHOOK_SECRET_ARN"}  # fmt: skip
# Read by code a function can import but never runs (static reachability over-counts).
READ_BY_CODE_NOT_RUN = {
    # atcore.task_queue.TaskQueueOutlet, which only the dispatcher builds; the worker imports the
    # module for parse_message.
    "WorkerFunction": {"TASK_QUEUE_URL"},
}
# Never set on AWS: the password and the callback signing secret come from Secrets Manager.
FORBIDDEN = {"DB_PASSWORD", "AT_WEBHOOK_SECRET"}
# Set by the template but read by no code yet.
SET_AHEAD_OF_CODE: dict[str, set[str]] = {}

ALWAYS_MANAGED = {"arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
                  "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"}  # fmt: skip
XRAY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
SQS_EVENT_SOURCE = "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"
# Called by code a function can import but never runs: the dispatcher imports atcore.execution,
# which imports the executors for the worker's run_batch; the dispatcher only hands tasks over.
CALLS_NOT_RUN = {"DispatcherFunction": {"ses:SendEmail", "sns:Publish"}}
# Actions on "*" that the service cannot scope further: SNS has no resource type for a phone number.
UNSCOPED_ALLOWED = {"WorkerFunction": {"sns:Publish"}}


# --------------------------------------------------------------------------------- the tests


def _comparable(template: dict[str, Any]) -> str:
    # AlwaysDeploy: SAM names the API deployment after a fresh random id on every translation.
    text = json.dumps(template, sort_keys=True)
    text = re.sub(r"AtApiDeployment[0-9a-f]{10}", "AtApiDeployment", text)
    return re.sub(r"RestApi deployment id: [0-9a-f]+", "RestApi deployment id", text)


def test_translation_does_not_depend_on_parameter_values() -> None:
    # This is what lets every combination be resolved from one translation.
    base = _comparable(translated())
    for combo in COMBINATIONS[:: max(1, len(COMBINATIONS) // 6)]:
        assert _comparable(translate(combo)) == base, combo_id(combo)


def test_every_combination_is_covered() -> None:
    create = [c for c in COMBINATIONS if c["Database"] == "create"]
    assert len(create) == 2 * 3 * 2 * 2 * 2 * 2 * 2  # every axis, both network knobs
    assert len(COMBINATIONS) - len(create) == 3 * 2 * 2 * 2 * 2
    assert {"create", "existing"} == set(PARAMETERS["Database"]["AllowedValues"])
    assert set(AXES_EVERY_MODE["ApiAuth"]) == set(PARAMETERS["ApiAuth"]["AllowedValues"])


def test_create_mode_needs_no_answer_and_existing_mode_refuses_empty_answers() -> None:
    # `sam deploy --guided` with every default: no parameter may lack a default.
    assert [name for name, spec in PARAMETERS.items() if "Default" not in spec] == []
    assert PARAMETERS["Database"]["Default"] == "create"
    asserted = json.dumps(SOURCE["Rules"]["ExistingDatabaseIsNamed"])
    for name in EXISTING:
        assert f'"Ref": "{name}"' in asserted


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_environment_is_what_the_code_reads(combo: dict[str, str]) -> None:
    stack = resolved(combo)
    functions = stack.functions()
    assert set(functions) == set(FUNCTIONS)
    for function in FUNCTIONS:
        env = functions[function].get("Environment", {}).get("Variables", {})
        read = variables_read(function)
        for name, may_be_empty in REQUIRED[function].items():
            assert name in read, f"{function}: REQUIRED lists {name}, which its code no longer reads"
            assert name in env, f"{function}: {name} is not set"
            assert may_be_empty or env[name] not in ("", None), f"{function}: {name} is empty"
        unset = read - set(env) - OPTIONAL - FORBIDDEN - READ_BY_CODE_NOT_RUN.get(function, set())
        assert not unset, f"{function}: its code reads {sorted(unset)}, which the template does not set"
        unread = {n for n in env if not n.startswith("POWERTOOLS_")} - read - SET_AHEAD_OF_CODE.get(function, set())
        assert not unread, f"{function}: the template sets {sorted(unread)}, which no code of it reads"
        assert not FORBIDDEN & set(env)
        # Tracing: the X-Ray SDK is imported only where tracing is on (atcore.observability).
        traced = function in OTHER_FUNCTIONS or combo["ApiTracing"] == "true"
        assert functions[function]["TracingConfig"]["Mode"] == ("Active" if traced else "PassThrough")
        if function in API_FUNCTIONS:
            assert env["POWERTOOLS_TRACE_DISABLED"] == ("false" if traced else "true")


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_database_wiring(combo: dict[str, str]) -> None:
    stack = resolved(combo)
    for function, properties in stack.functions().items():
        env = properties["Environment"]["Variables"]
        if combo["Database"] == "create":
            assert env["DB_HOST"] == {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}, function
            assert env["DB_SECRET_ARN"] == {"Fn::GetAtt": ["DatabaseInstance", "MasterUserSecret.SecretArn"]}
            assert env["DB_SSLMODE"] == "verify-full"
        else:
            assert env["DB_HOST"] == EXISTING["DbHost"] and env["DB_SECRET_ARN"] == EXISTING["DbSecretArn"]
    migrations = stack.resources["DatabaseMigrations"]["Properties"]
    dispatcher_env = stack.functions()["DispatcherFunction"]["Environment"]["Variables"]
    assert (
        migrations["DbHost"] == dispatcher_env["DB_HOST"]
        and migrations["DbSecretArn"] == dispatcher_env["DB_SECRET_ARN"]
    )
    creates = {"AWS::EC2::VPC", "AWS::RDS::DBInstance", "AWS::RDS::DBProxy", "AWS::EC2::NatGateway"}
    present = {r["Type"] for r in stack.resources.values()}
    if combo["Database"] == "existing":
        assert not creates & present
        return
    assert creates <= present
    proxy = stack.resources["DatabaseProxy"]["Properties"]
    assert proxy["RequireTLS"] is True and proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["Auth"][0]["SecretArn"] == {"Fn::GetAtt": ["DatabaseInstance", "MasterUserSecret.SecretArn"]}
    database = stack.resources["DatabaseInstance"]
    assert database["DeletionPolicy"] == database["UpdateReplacePolicy"] == "Snapshot"
    assert database["Properties"]["ManageMasterUserPassword"] is True
    assert database["Properties"]["PubliclyAccessible"] is False and database["Properties"]["StorageEncrypted"]
    nat = [r for r in stack.resources.values() if r["Type"] == "AWS::EC2::NatGateway"]
    assert len(nat) == int(combo["NatGateways"])


def _security_group_rules(stack: Resolved) -> list[tuple[str, str, str, int, int]]:
    """(group, direction, peer, from, to): peer is a group's logical id or a CIDR."""
    rules = []

    def add(group: str, direction: str, rule: dict[str, Any]) -> None:
        peer = rule.get("CidrIp") or rule.get("SourceSecurityGroupId") or rule.get("DestinationSecurityGroupId")
        peer = peer["Ref"] if isinstance(peer, dict) else peer
        rules.append((group, direction, peer, int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))))

    for name, properties in stack.of_type("AWS::EC2::SecurityGroup").items():
        for rule in properties.get("SecurityGroupIngress", []):
            add(name, "in", rule)
        for rule in properties.get("SecurityGroupEgress", []):
            add(name, "out", rule)
    for kind, direction in (("AWS::EC2::SecurityGroupIngress", "in"), ("AWS::EC2::SecurityGroupEgress", "out")):
        for properties in stack.of_type(kind).values():
            add(properties["GroupId"]["Ref"], direction, properties)
    return rules


FUNCTION_GROUPS = {**dict.fromkeys(API_FUNCTIONS, "ApiFunctionSecurityGroup"),
                   "DispatcherFunction": "DispatcherSecurityGroup", "WorkerFunction": "WorkerSecurityGroup",
                   "MigrateFunction": "MigrateSecurityGroup"}  # fmt: skip


@pytest.mark.parametrize("combo", [c for c in COMBINATIONS if c["Database"] == "create"], ids=combo_id)
def test_network_allows_only_what_each_function_needs(combo: dict[str, str]) -> None:
    stack = resolved(combo)
    for function, properties in stack.functions().items():
        assert properties["VpcConfig"]["SecurityGroupIds"] == [{"Ref": FUNCTION_GROUPS[function]}], function
        assert properties["VpcConfig"]["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    rules = _security_group_rules(stack)
    # Nothing accepts connections from an address range: only from named groups.
    assert [r for r in rules if r[1] == "in" and "/" in str(r[2])] == []
    # PostgreSQL: from the proxy only; the proxy: from the four function groups only, on 5432.
    assert {(r[2], r[3], r[4]) for r in rules if r[0] == "DatabaseSecurityGroup" and r[1] == "in"} == {
        ("ProxySecurityGroup", 5432, 5432)
    }
    assert {r[2] for r in rules if r[0] == "ProxySecurityGroup" and r[1] == "in"} == set(FUNCTION_GROUPS.values())
    assert {r[2] for r in rules if r[0] == "ProxySecurityGroup" and r[1] == "out"} == {"DatabaseSecurityGroup"}
    for group in set(FUNCTION_GROUPS.values()):
        outbound = {(r[2], r[3], r[4]) for r in rules if r[0] == group and r[1] == "out"}
        assert ("DatabaseSecurityGroup", 5432, 5432) not in outbound  # never around the proxy
        assert ("ProxySecurityGroup", 5432, 5432) in outbound
        to_internet = {(low, high) for peer, low, high in outbound if peer == "0.0.0.0/0"}
        if group == "WorkerSecurityGroup":
            assert to_internet == {(0, 65535)}  # callbacks name any URL and port
        elif group == "MigrateSecurityGroup":
            assert to_internet == {(443, 443)}  # CloudFormation's pre-signed S3 URL
        elif combo["InterfaceEndpoints"] == "true":
            assert to_internet == set(), group  # Secrets Manager and SQS through the endpoints
            assert ("EndpointSecurityGroup", 443, 443) in outbound
        else:
            assert to_internet == {(443, 443)}, group  # AWS APIs through the NAT gateway
    endpoints = {p["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1] for p in stack.of_type("AWS::EC2::VPCEndpoint").values()}
    assert endpoints == ({"s3", "secretsmanager", "sqs"} if combo["InterfaceEndpoints"] == "true" else {"s3"})


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_every_route_reaches_its_function_through_the_alias_with_the_chosen_auth(combo: dict[str, str]) -> None:
    stack = resolved(combo)
    body = stack.resources["AtApi"]["Properties"]["Body"]
    routes = {(method.upper(), path): op for path, item in body["paths"].items() for method, op in item.items()}
    assert set(routes) == set(API_FUNCTIONS.values())
    scheme = {"IAM": [{"sigv4": []}], "API_KEY": [{"api_key": []}], "NONE": None}[combo["ApiAuth"]]
    for function, route in API_FUNCTIONS.items():
        uri = routes[route]["x-amazon-apigateway-integration"]["uri"]
        assert refs(uri) == {f"{function}Aliaslive"}, (route, uri)  # the published alias, not $LATEST
        assert routes[route].get("security") == (None if route in OPEN_ROUTES else scheme), route
        alias = stack.resources[f"{function}Aliaslive"]["Properties"]
        assert alias["FunctionName"] == {"Ref": function}
        properties = stack.functions()[function]
        assert ("SnapStart" in properties) == (combo["SnapStart"] == "true")
        if combo["SnapStart"] == "true":
            assert properties["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        reserved = properties.get("ReservedConcurrentExecutions")
        if combo["ApiReservedConcurrency"] == "0":
            assert reserved is None
        else:
            assert reserved == (2 if route in OPEN_ROUTES else combo["ApiReservedConcurrency"])
    for function in OTHER_FUNCTIONS:
        assert "SnapStart" not in stack.functions()[function]  # LISTEN and threads: not snapshotted
    stage = next(iter(stack.of_type("AWS::ApiGateway::Stage").values()))
    assert stage["AccessLogSetting"]["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert json.loads(stage["AccessLogSetting"]["Format"])["requestId"] == "$context.requestId"
    throttles = {(s["ResourcePath"], s["HttpMethod"]): s for s in stage["MethodSettings"]}
    health, everything = throttles[("/~1health", "GET")], throttles[("/*", "*")]
    assert float(health["ThrottlingRateLimit"]) < float(everything["ThrottlingRateLimit"])
    assert int(health["ThrottlingBurstLimit"]) < int(everything["ThrottlingBurstLimit"])
    assert (combo["ApiAuth"] == "API_KEY") == ("ApiKey" in stack.resources)


def _role_of(stack: Resolved, function: str) -> dict[str, Any]:
    return stack.resources[stack.functions()[function]["Role"]["Fn::GetAtt"][0]]["Properties"]


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_every_role_grants_only_what_its_code_calls(combo: dict[str, str]) -> None:
    stack = resolved(combo)
    for function in FUNCTIONS:
        role = _role_of(stack, function)
        statements = [s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]
        called = actions_called(function)
        for statement in statements:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                assert action != "*" and not action.endswith(":*"), f"{function}: {action}"
                assert any(fnmatch.fnmatchcase(call, action) for call in called), (
                    f"{function} is granted {action}, which its code never calls"
                )
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "*" in resources:
                assert set(actions) <= UNSCOPED_ALLOWED.get(function, set()), f"{function}: {actions} on *"
        # ...and the code gets what it calls, unless the stack was told not to allow it.
        granted = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
        gated = {"ses:SendEmail": "EmailFrom/AllowedEmailSenders", "sqs:SendMessage": "AllowedQueueArns"}
        missing = {c for c in called if not any(fnmatch.fnmatchcase(c, g) for g in granted)}
        if function == "WorkerFunction":
            missing -= set(gated)  # granted only when those parameters name senders or queues
        missing -= CALLS_NOT_RUN.get(function, set())
        assert not missing, f"{function} calls {sorted(missing)} but is not granted it"
        managed = {m for m in role.get("ManagedPolicyArns", []) if isinstance(m, str)}
        expected = ALWAYS_MANAGED | {XRAY} | ({SQS_EVENT_SOURCE} if function == "WorkerFunction" else set())
        # SAM adds the X-Ray write policy whenever a function has a Tracing property, PassThrough
        # included; with ApiTracing=false the API functions hold it but send nothing.
        assert managed == expected, function
        conditional = [m for m in role.get("ManagedPolicyArns", []) if not isinstance(m, str)]
        assert conditional == ([{"Ref": "DbSecretKmsDecryptPolicy"}] if stack.condition("HasDbSecretKmsKey") else [])


def test_the_worker_gets_ses_and_queues_only_when_named() -> None:
    combo = COMBINATIONS[0] | {
        "EmailFrom": "at@example.com",
        "AllowedQueueArns": "arn:aws:sqs:us-east-1:123456789012:q",
    }
    stack = Resolved(translated(), combo)
    statements = [s for p in _role_of(stack, "WorkerFunction")["Policies"] for s in p["PolicyDocument"]["Statement"]]
    actions = {s["Action"] if isinstance(s["Action"], str) else s["Action"][0]: s for s in statements}
    assert actions["ses:SendEmail"]["Condition"]["StringEquals"]["ses:FromAddress"] == ["at@example.com", ""]
    assert actions["sqs:SendMessage"]["Resource"] == ["arn:aws:sqs:us-east-1:123456789012:q"]
    default = Resolved(translated(), COMBINATIONS[0])
    statements = [s for p in _role_of(default, "WorkerFunction")["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert not {"ses:SendEmail", "sqs:SendMessage"} & {s["Action"] for s in statements if isinstance(s["Action"], str)}


WEBHOOK_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:at-webhooks-AbCdEf"


def _unsubstituted(resource: Any) -> Any:
    """A policy template's {"Fn::Sub": ["${secretArn}", {"secretArn": X}]} as X."""
    if isinstance(resource, dict) and isinstance(sub := resource.get("Fn::Sub"), list) and sub[0] == "${secretArn}":
        return sub[1]["secretArn"]
    return resource


@pytest.mark.parametrize("database", ["create", "existing"])
def test_the_worker_reads_the_webhook_secret_only_when_named(database: str) -> None:
    combo = next(c for c in COMBINATIONS if c["Database"] == database)
    for webhook_secret in ("", WEBHOOK_SECRET_ARN):
        stack = Resolved(translated(), combo | {"WebhookSecretArn": webhook_secret})
        for function, properties in stack.functions().items():
            env = properties["Environment"]["Variables"]
            assert "AT_WEBHOOK_SECRET" not in env, function  # the value never; the worker reads it itself
            assert ("AT_WEBHOOK_SECRET_ARN" in env) == (function == "WorkerFunction"), function
        assert (
            stack.functions()["WorkerFunction"]["Environment"]["Variables"]["AT_WEBHOOK_SECRET_ARN"] == webhook_secret
        )
        for function in FUNCTIONS:
            statements = [
                s for p in _role_of(stack, function).get("Policies", []) for s in p["PolicyDocument"]["Statement"]
            ]
            readable = [s["Resource"] for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])]
            database_secret = {"Fn::GetAtt": ["DatabaseInstance", "MasterUserSecret.SecretArn"]}
            expected = [database_secret if database == "create" else EXISTING["DbSecretArn"]]
            if function == "WorkerFunction" and webhook_secret:
                expected.append(webhook_secret)  # that secret only, by its ARN
            assert [_unsubstituted(r) for r in readable] == expected, (function, readable)


def test_only_the_dispatcher_can_pin_a_proxy_connection() -> None:
    # RDS Proxy pins a client connection to its database connection on LISTEN, session-level
    # advisory locks, SET, PREPARE and temporary tables. The SQL texts are named queries in
    # atcore/sql/*.sql; only the dispatcher's module runs the LISTEN, and only MigrateFunction (its
    # own short session, closed at once) takes an advisory lock.
    sql = "\n".join(p.read_text(encoding="utf-8") for p in (LAYER / "atcore" / "sql").glob("*.sql"))
    statements = [s.strip() for s in re.split(r"-- name: \w+", sql) if s.strip()]
    bodies = ["\n".join(line for line in s.splitlines() if not line.lstrip().startswith("--")) for s in statements]
    assert not [b for b in bodies if re.match(r"\s*(SET|RESET|PREPARE|DISCARD|DEALLOCATE)\b", b, re.I)]
    assert not [b for b in bodies if re.search(r"\b(TEMP|TEMPORARY)\s+TABLE\b|pg_advisory_lock", b, re.I)]
    listen = [b for b in bodies if re.match(r"\s*LISTEN\b", b, re.I)]
    assert len(listen) == 1
    dispatcher = LAYER / "atcore" / "dispatcher.py"
    assert "listen_for_due_soon" in dispatcher.read_text(encoding="utf-8")
    for function in FUNCTIONS:
        assert (dispatcher in reachable(function)) == (function == "DispatcherFunction"), function
    assert "pg_advisory_lock" in (ROOT / "db" / "migrate.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("function", API_FUNCTIONS)
def test_api_functions_carry_the_snapstart_hooks(function: str) -> None:
    assert LAYER / "atcore" / "snapstart.py" in reachable(function)
    assert "snapshot-restore-py" in (ROOT / "layers" / "common" / "requirements.txt").read_text()


def _dashboard_json(stack: Resolved) -> Any:
    """The DashboardBody as CloudWatch receives it, with every ${...} replaced by a placeholder."""
    separator, parts = stack.resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Join"]
    texts = [p["Fn::Sub"] if isinstance(p, dict) else p for p in parts]
    return json.loads(re.sub(r"\$\{[^}]+\}", "x", separator.join(texts)))


@pytest.mark.parametrize("database", ["create", "existing"])
def test_dashboard_body_is_valid_json(database: str) -> None:
    combo = next(c for c in COMBINATIONS if c["Database"] == database)
    widgets = _dashboard_json(resolved(combo))["widgets"]
    assert len(widgets) == (10 if database == "create" else 8)


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    stack = resolved(COMBINATIONS[0])
    body = json.dumps(stack.resources["Dashboard"]["Properties"]["DashboardBody"])
    for metric in ("LatenessSeconds", "TasksCompleted", "TasksRetried", "TasksFailed", "OldestDueTaskAgeSeconds",
                   "ApproximateNumberOfMessagesVisible", "5XXError", "Latency", "DatabaseConnections",
                   "DatabaseConnectionsCurrentlySessionPinned"):  # fmt: skip
        assert metric in body, metric
    existing = Resolved(translated(), next(c for c in COMBINATIONS if c["Database"] == "existing"))
    assert "ProxyName" not in json.dumps(existing.resources["Dashboard"]["Properties"]["DashboardBody"])


def test_every_checkov_skip_says_why() -> None:
    skips = [(name, skip) for name, resource in SOURCE["Resources"].items()
             for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]  # fmt: skip
    assert skips, "make lint runs checkov; the template documents its skips"
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (name, skip)
        assert len(skip.get("comment", "")) >= 40, f"{name} skips {skip['id']} without a reason"


def test_samconfig_overrides_name_real_parameters_and_allowed_values() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    for environment, commands in config.items():
        if not isinstance(commands, dict):
            continue  # version
        for entry in commands.get("deploy", {}).get("parameters", {}).get("parameter_overrides", []):
            name, _, value = entry.partition("=")
            assert name in PARAMETERS, f"[{environment}] {name} is not a template parameter"
            allowed = PARAMETERS[name].get("AllowedValues")
            if allowed and not value.startswith("<"):
                assert value in [str(v) for v in allowed], f"[{environment}] {name}={value}"
