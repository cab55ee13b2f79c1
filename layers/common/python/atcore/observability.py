"""The Powertools logger, tracer and metrics, created once for every function.

Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE
(set in template.yaml); the defaults keep local runs and tests quiet and predictable.
"""

import os
import warnings
from collections.abc import Callable, Sequence

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "at")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AT")

logger = Logger()
metrics = Metrics()


class _NoTracer:
    """Stands in for Powertools' Tracer where tracing is off. Powertools' own Tracer imports the
    X-Ray SDK (~40 modules, about 100 ms of a cold start) even when disabled."""

    def capture_lambda_handler(
        self, lambda_handler: Callable | None = None, capture_response: bool = True, capture_error: bool = True
    ) -> Callable:
        return lambda_handler if lambda_handler is not None else (lambda handler: handler)

    def patch(self, modules: Sequence[str]) -> None:
        pass


def tracing_enabled() -> bool:
    """As Powertools decides (tracing/tracer.py), without importing it: on Lambda, not in
    `sam local`, and not switched off by POWERTOOLS_TRACE_DISABLED (the template sets it from
    ApiTracing for the API functions)."""
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and not os.environ.get("AWS_SAM_LOCAL")


if tracing_enabled():
    from aws_lambda_powertools import Tracer

    # No auto-patching: X-Ray's patch_all imports every library it can trace (botocore, requests,
    # ...), which doubled the API functions' cold start for calls they never make. Functions that
    # call AWS patch botocore themselves (see functions/dispatcher and functions/worker).
    tracer: Tracer | _NoTracer = Tracer(auto_patch=False)
else:
    tracer = _NoTracer()


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
