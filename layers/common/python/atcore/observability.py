"""The Powertools logger, tracer and metrics, created once for every function.

Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE
(set in template.yaml); the defaults keep local runs and tests quiet and predictable.
"""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "at")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AT")

logger = Logger()
tracer = Tracer()
metrics = Metrics()
