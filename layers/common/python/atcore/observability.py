"""The Powertools logger, tracer and metrics, created once for every function.

Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE
(set in template.yaml); the defaults keep local runs and tests quiet and predictable.
"""

import os
import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "at")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AT")

logger = Logger()
# No auto-patching: X-Ray's patch_all imports every library it can trace (botocore, requests,
# ...), which doubled the API functions' cold start for calls they never make. Functions that
# call AWS patch botocore themselves (see functions/dispatcher and functions/worker).
tracer = Tracer(auto_patch=False)
metrics = Metrics()


_METRICS_DISABLED = is_metrics_disabled()
if _METRICS_DISABLED:
    # With metrics disabled (the local run) nothing is ever published, yet log_metrics warns after
    # every invocation that added none. On AWS metrics are enabled and the warning still shows.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


def add_metric(name: str, unit: MetricUnit, value: float) -> None:
    """metrics.add_metric, skipped when metrics are disabled (the local run): Powertools still
    validates and buffers every value then, which cost a tenth of the engine's CPU per task."""
    if not _METRICS_DISABLED:
        metrics.add_metric(name=name, unit=unit, value=value)
