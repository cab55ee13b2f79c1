"""The X-Ray SDK is imported only where tracing is on (atcore.observability; the template's
ApiTracing sets POWERTOOLS_TRACE_DISABLED for the API functions). Fresh interpreters, no I/O."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common" / "python"

PROBE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import app
from atcore.observability import tracer
print(json.dumps({"xray": sorted(m for m in sys.modules if m.startswith("aws_xray_sdk")),
                  "tracer": type(tracer).__name__}))
"""


def probe(function: str, **env: str) -> dict:
    function_dir = ROOT / "functions" / function
    base = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "at"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(function_dir), str(LAYER)], capture_output=True,
                            text=True, env=base | env, cwd=function_dir, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


ON_LAMBDA = {"LAMBDA_TASK_ROOT": "/var/task", "AWS_LAMBDA_FUNCTION_NAME": "at-fn"}


@pytest.mark.parametrize("function", ["get_task", "health"])
def test_no_xray_sdk_when_api_tracing_is_off(function):
    found = probe(function, **ON_LAMBDA, POWERTOOLS_TRACE_DISABLED="true")
    assert found == {"xray": [], "tracer": "_NoTracer"}


def test_no_xray_sdk_outside_lambda():
    assert probe("get_task") == {"xray": [], "tracer": "_NoTracer"}


def test_tracer_when_tracing_is_on():
    found = probe("get_task", **ON_LAMBDA, POWERTOOLS_TRACE_DISABLED="false")
    assert found["tracer"] == "Tracer" and "aws_xray_sdk.core" in found["xray"]


def test_the_dispatcher_and_worker_are_traced_on_lambda():
    # The template sets no POWERTOOLS_TRACE_DISABLED for them (Tracing: Active).
    assert probe("dispatcher", **ON_LAMBDA)["tracer"] == "Tracer"
    assert probe("worker", **ON_LAMBDA)["tracer"] == "Tracer"
