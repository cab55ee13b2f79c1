"""API functions import nothing they don't use: no AWS SDK at cold start.

Each API function's app.py is imported in a fresh interpreter, with the function's directory
and the layer first on sys.path and the variables the Lambda runtime sets (so Powertools'
Tracer is on, as with `Tracing: Active`). No socket is opened: importing does no I/O.

`botocore` itself (its package __init__, standard library only) is tolerated: Powertools
imports it whenever it is installed, to register its user agent
(aws_lambda_powertools/shared/user_agent.py). Any botocore submodule, or boto3, means some
code path set up an AWS client or patched one at import time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.support.template import api_function_folders

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "common" / "python"
API_FUNCTIONS = api_function_folders()  # from template.yaml

PROBE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import app
print(json.dumps(sorted(sys.modules)))
"""


def modules_after_import(function: str) -> list[str]:
    function_dir = ROOT / "functions" / function
    env = {
        "PATH": "/usr/bin:/bin",
        "LAMBDA_TASK_ROOT": str(function_dir),
        "AWS_LAMBDA_FUNCTION_NAME": f"at-{function}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "at",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(function_dir), str(LAYER)],
        capture_output=True, text=True, env=env, cwd=function_dir, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("function", API_FUNCTIONS)
def test_api_function_imports_no_aws_sdk(function):
    modules = modules_after_import(function)
    assert "boto3" not in modules
    assert [m for m in modules if m.startswith("botocore.")] == []
