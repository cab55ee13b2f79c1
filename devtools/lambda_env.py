"""A Lambda execution environment in a process of its own: one invocation at a time, as on AWS.

    env = LambdaEnvironment(spec, environ, log_path)   # starts `python -m devtools.lambda_env`
    invocation = env.invoke(event)                     # JSON in, JSON out; the process stays warm

The child imports the function's handler once (its init, timed like Lambda's cold start), then
serves invocations read as JSON lines on stdin and answers on a private copy of stdout; what the
handler prints or logs goes to stderr, which the parent writes to `log_path`. An invocation that
outlives the function's timeout kills the process, as Lambda does; the next one starts a new one.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "common" / "python"


@dataclass(frozen=True)
class FunctionSpec:
    """What a function's template entry says about running it."""

    name: str
    code_uri: Path
    handler: str  # module.attribute
    timeout_seconds: float
    memory_mb: int
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class LambdaContext:
    """The attributes and method of the Python runtime's context object that handlers use."""

    function_name: str
    memory_limit_in_mb: str  # a string in the real runtime too (it comes from an env variable)
    invoked_function_arn: str
    timeout_seconds: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    client_context: Any = None
    identity: Any = None
    tenant_id: str | None = None
    log_group_name: str = field(init=False)
    log_stream_name: str = field(init=False)
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    result: Any  # what the handler returned (None after an error)
    error: str | None  # the error type, e.g. "Task timed out", "Runtime.ImportModuleError", "KeyError"
    duration_ms: float  # the handler's own run time: what Lambda bills (plus init on a cold start)
    init_ms: float | None  # set on the cold start that this invocation paid for


class LambdaEnvironment:
    def __init__(self, spec: FunctionSpec, environ: dict[str, str], log_path: Path) -> None:
        self.spec = spec
        self._environ = environ
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.cold_starts = 0
        self._cpu_of_closed = 0.0

    def invoke(self, event: Any) -> Invocation:
        init_ms = None
        if self._process is None:
            started = self._start()
            if isinstance(started, str):  # the init failed
                return Invocation(None, started, 0.0, None)
            init_ms = started
        assert self._process is not None and self._process.stdin is not None
        request = {"event": event, "timeout_seconds": self.spec.timeout_seconds}
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        self._process.stdin.flush()
        reply = self._read_reply(self.spec.timeout_seconds + 1.0)
        if reply is None:  # Lambda stops the environment of a timed-out invocation
            self.close()
            return Invocation(None, "Task timed out", self.spec.timeout_seconds * 1000, init_ms)
        return Invocation(reply.get("result"), reply.get("error"), reply["duration_ms"], init_ms)

    def warm(self) -> float | str:
        """Start the environment now, as earlier traffic would have: its next invocation is warm.
        Returns init ms, or the init error."""
        return self._start() if self._process is None else 0.0

    def _start(self) -> float | str:
        """Starts the process and waits for its init; returns init ms, or the init error."""
        self.cold_starts += 1
        self._log = self._log or open(self._log_path, "ab")
        # Lambda's own variables, except AWS_LAMBDA_FUNCTION_NAME/_RUNTIME_API: code that sees
        # those believes it runs on Lambda (callbacks to loopback are then refused, for one).
        env = self._environ | {
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.spec.memory_mb),
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        }
        args = [sys.executable, "-m", "devtools.lambda_env", str(self.spec.code_uri), self.spec.handler, self.spec.name]
        self._process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        ready = self._read_reply(60.0)
        if ready is None or "init_error" in ready:
            self.close()
            return (ready or {}).get("init_error", "Runtime.InitTimeout")
        return float(ready["init_ms"])

    def _read_reply(self, timeout: float) -> dict[str, Any] | None:
        process = self._process  # close() from another thread (the harness stopping) may clear it
        if process is None or process.stdout is None:
            return None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        line = process.stdout.readline()
        return json.loads(line) if line else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every process this environment has run, as Linux counts it."""
        return self._cpu_of_closed + self._cpu_of_running()

    def _cpu_of_running(self) -> float:
        process = self._process
        return 0.0 if process is None else _cpu_of(process)

    def close(self) -> None:
        # Two threads may close at once (a timed-out invocation while the harness stops): one wins.
        process, self._process = self._process, None
        if process is not None:
            self._cpu_of_closed += _cpu_of(process)
            process.kill()
            process.wait()
        log, self._log = self._log, None
        if log is not None:
            log.close()


def _cpu_of(process: subprocess.Popen[bytes]) -> float:
    """The process's CPU seconds (user + system) so far, as Linux counts them."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _serve(handler_path: str, function_name: str) -> None:
    """The child: import the handler (init), then one invocation at a time."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the handler's prints and log lines go to stderr, never into the replies
    module_name, _, attribute = handler_path.rpartition(".")
    began = time.perf_counter()
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # noqa: BLE001 - reported as Lambda reports an init failure
        traceback.print_exc()
        error = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else f"Runtime.Init:{type(exc).__name__}"
        replies.write(json.dumps({"init_error": error}) + "\n")
        return
    replies.write(json.dumps({"init_ms": (time.perf_counter() - began) * 1000}) + "\n")
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    region = os.environ.get("AWS_REGION", "us-east-1")
    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(
            function_name=function_name,
            memory_limit_in_mb=memory,
            invoked_function_arn=f"arn:aws:lambda:{region}:123456789012:function:{function_name}",
            timeout_seconds=request["timeout_seconds"],
        )
        began = time.perf_counter()
        try:
            reply: dict[str, Any] = {"result": handler(request["event"], context)}
        except Exception as exc:  # noqa: BLE001 - a failed invocation, not a failed environment
            traceback.print_exc()
            reply = {"error": type(exc).__name__}
        reply["duration_ms"] = (time.perf_counter() - began) * 1000
        replies.write(json.dumps(reply, default=str) + "\n")


if __name__ == "__main__":
    sys.path[:0] = [sys.argv[1], str(LAYER)]  # /var/task and /opt/python on Lambda
    _serve(sys.argv[2], sys.argv[3])
