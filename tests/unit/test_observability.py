"""atcore.observability: Powertools' "No application metrics to publish" warning is silenced only
where metrics are disabled (the local run), not on AWS where an empty metric set could matter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A handler decorated like the API functions' (metrics.log_metrics) that adds no metric; the
# warnings are printed to stderr as the interpreter would, whatever pytest's own filters say.
PROGRAM = """
import warnings
warnings.simplefilter("default")
from atcore.observability import metrics

@metrics.log_metrics
def handler(event, context):
    return {}

handler({}, None)
"""


@pytest.mark.parametrize("disabled, warned", [("true", False), ("false", True)])
def test_empty_metrics_warning_only_where_metrics_are_published(disabled: str, warned: bool) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POWERTOOLS_")}
    env |= {"POWERTOOLS_METRICS_DISABLED": disabled}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert ("No application metrics to publish" in result.stderr) is warned, result.stderr
