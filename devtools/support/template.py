"""What template.yaml says about the functions: the one list of them and of their routes.

A new function is a folder in functions/ plus its entry in template.yaml; the OpenAPI document,
the benchmarks and the tests find it here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
_METHOD_ORDER = ("POST", "GET", "PATCH", "PUT", "DELETE")


@dataclass(frozen=True)
class ApiRoute:
    function: str  # the template's resource name, e.g. CreateTaskFunction
    folder: str  # its folder under functions/, e.g. create_task
    method: str  # upper case
    path: str  # as API Gateway writes it, e.g. /api/v1/tasks/{id}


@functools.cache
def template() -> dict[str, Any]:
    from samcli.yamlhelper import yaml_parse  # CloudFormation's short tags (!Ref, !If, ...) included

    return yaml_parse(TEMPLATE.read_text(encoding="utf-8"))


def functions() -> dict[str, dict[str, Any]]:
    """Every AWS::Serverless::Function, by resource name."""
    return {
        name: resource
        for name, resource in template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def function_folder(function: str) -> str:
    return Path(functions()[function]["Properties"]["CodeUri"]).name


def api_routes() -> list[ApiRoute]:
    """Every Api event's route, collection before item, then by method (the OpenAPI document's order)."""
    routes = [
        ApiRoute(name, function_folder(name), event["Properties"]["Method"].upper(), event["Properties"]["Path"])
        for name, function in functions().items()
        for event in function["Properties"].get("Events", {}).values()
        if event["Type"] == "Api"
    ]
    return sorted(routes, key=lambda r: (r.path.startswith("/health"), r.path, _METHOD_ORDER.index(r.method)))


def api_function_folders() -> list[str]:
    """The API functions' folders, in api_routes() order."""
    return list(dict.fromkeys(route.folder for route in api_routes()))
