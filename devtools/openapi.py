"""The API's OpenAPI document, generated from the code: the API functions' resolvers (template.yaml names them).

    python -m devtools.openapi           # write docs/openapi.json
    python -m devtools.openapi --check   # exit 1 when docs/openapi.json differs from the code

Each function's Powertools resolver describes its own route (models from atcore.models, error
responses from atcore.api.error_responses); Powertools' OpenAPIMerge joins them into one
document. Two touches follow, for what Powertools cannot say: the 422 it lists for every
validated route is dropped (AT answers 400, see atcore.api), and optional query parameters get
`allowEmptyValue` (`?limit=` means "not given").

The local run serves the document at /openapi.json and a Swagger UI at /docs (`docs_routes`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from devtools.support.template import api_function_folders

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"
TITLE = "AT API"
DESCRIPTION = (
    "AT schedules one-off tasks: create one for a time in the future, read, list and cancel it. "
    'Every error is a JSON body `{"error": "..."}` (validation errors add `details`). '
    "Generated from the code by `python -m devtools.openapi`; every rule is in docs/API.md."
)
# Powertools documents 422 for its validation errors (AT answers those with 400); a 422 of AT's own
# (Idempotency-Key reused) has AT's description.
_POWERTOOLS_VALIDATION = ("422", "Validation Error")


def api_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def load_resolver(function: str) -> Any:
    """functions/<function>/app.py's `app`, imported under a module name of its own."""
    spec = importlib.util.spec_from_file_location(f"_openapi_{function}", ROOT / "functions" / function / "app.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no functions/{function}/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def build_document() -> dict[str, Any]:
    from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

    merge = OpenAPIMerge(title=TITLE, version=api_version(), description=DESCRIPTION, on_conflict="error")
    for function in api_function_folders():  # from template.yaml: the collection, one task, health
        merge.add_schema(
            json.loads(load_resolver(function).get_openapi_json_schema(title=TITLE, version=api_version()))
        )
    document = _integral_numbers(merge.get_openapi_schema())
    for operation in _operations(document):
        status, description = _POWERTOOLS_VALIDATION
        if operation["responses"].get(status, {}).get("description") == description:
            del operation["responses"][status]
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and not parameter.get("required"):
                parameter["allowEmptyValue"] = True
    _drop_unreferenced_schemas(document)
    return document


def _integral_numbers(node: Any) -> Any:
    """Powertools' models hold every bound as a float: write 100, not 100.0 (exact below 2**53)."""
    if isinstance(node, dict):
        return {key: _integral_numbers(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_integral_numbers(value) for value in node]
    if isinstance(node, float) and node.is_integer():
        if abs(node) >= 2**53:
            raise ValueError(f"{node} cannot be written exactly in the OpenAPI document: use a format (int64)")
        return int(node)
    return node


def _operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in document.get("paths", {}).values():
        yield from path_item.values()


def _drop_unreferenced_schemas(document: dict[str, Any]) -> None:
    """Powertools adds its validation-error schemas to every document; keep what is referenced."""
    schemas = document.get("components", {}).get("schemas", {})
    prefix = "#/components/schemas/"
    referenced: set[str] = set()
    pending = [document["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix) :] not in referenced:
                referenced.add(ref[len(prefix) :])
                pending.append(schemas.get(ref[len(prefix) :]))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    for name in list(schemas):
        if name not in referenced:
            del schemas[name]


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- the local run: /openapi.json and a Swagger UI at /docs ------------------------------------

_SWAGGER_ASSETS = ("swagger-ui-bundle.min.js", "swagger-ui.min.css")
_document_lock = threading.Lock()


@cache
def _served_json() -> str:
    with _document_lock:  # the first requests may arrive together: import the functions once
        return render(build_document())


def docs_routes() -> dict[str, Callable[..., Any]]:
    """Flask views for devtools.local_api's `extra_routes`: the document, generated from the code
    on first request, and Powertools' Swagger UI with its assets served locally (no CDN)."""
    from aws_lambda_powertools.event_handler.openapi import swagger_ui
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html
    from flask import Response, abort, request, send_from_directory

    assets = Path(swagger_ui.__file__).parent

    def openapi_json() -> Response:
        return Response(_served_json(), mimetype="application/json")

    def swagger() -> Response:
        if request.args.get("format") == "json":  # the UI's own "explore" bar asks for this
            return openapi_json()
        spec = _served_json().replace("</", "<\\/")  # as Powertools does: keep </script> out of the page
        page = generate_swagger_html(spec, f"/docs/{_SWAGGER_ASSETS[0]}", f"/docs/{_SWAGGER_ASSETS[1]}", "/docs", None)
        return Response(page, mimetype="text/html")

    def swagger_asset(name: str) -> Response:
        if name not in _SWAGGER_ASSETS:
            abort(404)
        return send_from_directory(assets, name)

    return {"/openapi.json": openapi_json, "/docs": swagger, "/docs/<name>": swagger_asset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.openapi", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help=f"compare with {DOCUMENT.relative_to(ROOT)}, write nothing"
    )
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    text = render(build_document())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
