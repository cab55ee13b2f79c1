"""The Lambda functions in-process, as Lambda calls them: events from events/, a context, a handler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from devtools.lambda_env import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = ROOT / "events"
FUNCTIONS_DIR = ROOT / "functions"


def lambda_context(timeout_seconds: float = 10.0, function_name: str = "at-test") -> LambdaContext:
    """A fresh invocation's context: `timeout_seconds` left (the API functions' timeout by default)."""
    return LambdaContext(
        function_name=function_name,
        memory_limit_in_mb="256",
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}",
        timeout_seconds=timeout_seconds,
    )


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    event.update(overrides)
    return event


_functions: dict[str, ModuleType] = {}


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py once, under a unique module name (every function's module is `app`)."""
    if name not in _functions:
        spec = importlib.util.spec_from_file_location(f"at_function_{name}", FUNCTIONS_DIR / name / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _functions[name] = module
    return _functions[name]


def invoke_raw(function: str, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Invoke a function's Lambda handler in-process; returns the proxy response as is."""
    return load_function(function).lambda_handler(event, context or lambda_context())


def invoke(function: str, event: dict[str, Any]) -> tuple[int, Any]:
    """Invoke a function's Lambda handler in-process; returns (status, parsed JSON body or text)."""
    response = invoke_raw(function, event)
    body = response.get("body") or ""
    try:
        return response["statusCode"], json.loads(body)
    except ValueError:
        return response["statusCode"], body
