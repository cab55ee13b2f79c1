"""The Powertools logger, tracer and metrics, created once for every function.

Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE
(set in template.yaml); the defaults keep local runs and tests quiet and predictable.
"""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "at")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AT")

logger = Logger()
# No auto-patching: X-Ray's patch_all imports every library it can trace (botocore, requests,
# ...), which doubled the API functions' cold start for calls they never make. Functions that
# call AWS patch botocore themselves (see functions/dispatcher and functions/worker).
tracer = Tracer(auto_patch=False)
metrics = Metrics()
