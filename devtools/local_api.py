"""A Docker-free `sam local start-api`: SAM CLI's own API Gateway emulation, handlers run in-process.

The SAM CLI reads the routes (ApiProvider) and the functions (SamFunctionProvider) from template.yaml,
and its LocalApigwService (a Flask app) turns each HTTP request into the REST API (payload 1.0)
proxy event and each handler result back into an HTTP response, exactly as `sam local start-api`
does (except that requestId and requestTime are fresh per request, as on AWS). Only the Lambda
runner is ours: instead of a Docker container per invocation it imports the function's handler
once and calls it in a thread of a threaded werkzeug server.

    python -m devtools.local_api [--template template.yaml] [--host 127.0.0.1] [--port 8080]

The caller owns the process: the layer (layers/common/python) must already be on sys.path and the
environment (DB_HOST, ...) already set; the template's Environment variables are NOT applied.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from samcli.commands.local.lib.exceptions import NoApisDefined
from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.provider import Function
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.apigw.local_apigw_service import LocalApigwService
from samcli.local.lambdafn.exceptions import FunctionNotFound
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

LOG = logging.getLogger("devtools.local_api")  # not __main__ under python -m

Handler = Callable[[dict[str, Any], Any], Any]

_ACCOUNT_ID = "123456789012"  # SAM's fake account id, also used in the events it builds


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


def _lambda_error(exc: BaseException, request_id: str, error_type: str | None = None) -> dict[str, Any]:
    """The error document the Python runtime returns for a failed invocation (awslambdaric make_error).

    Its four keys matter: SAM does not take it for a "user error" (that would be a 500) but rejects
    it as an invalid proxy response, answering 502 Internal server error like API Gateway does.
    """
    tb = exc.__traceback__
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "requestId": request_id,
        # Like the runtime, leave out the frames of the code that called the handler.
        "stackTrace": [
            line
            for frame, line in zip(traceback.extract_tb(tb), traceback.format_tb(tb), strict=True)
            if frame.filename != __file__
        ],
    }


def _json_default(value: Any) -> Any:
    # The runtime's marshaller writes Decimal as a JSON number; the stdlib json module cannot.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class InProcessLambdaRunner:
    """Duck-types samcli's LocalLambdaRunner for LocalApigwService: invoke() writes the result to stdout.

    Like Lambda, each loaded copy of a handler module (an "execution environment") serves one
    invocation at a time, and concurrent requests get more copies: handler modules keep
    per-request state at module level (Powertools' resolver does), which threads must not share.
    Copies are kept for reuse, so a warm request imports nothing.
    """

    def __init__(self, functions: SamFunctionProvider) -> None:
        self._functions = functions
        self._idle: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self._copies = itertools.count(1)
        self._loaded_siblings: dict[str, Path] = {}  # sibling module name -> folder, to warn on clashes

    def is_debugging(self) -> bool:
        return False  # LocalApigwService asks; False also means "run Flask threaded" in SAM

    def invoke(
        self,
        function_identifier: str,
        event: str,
        tenant_id: str | None = None,
        stdout: StreamWriter | None = None,
        stderr: StreamWriter | None = None,
        **_unused: Any,
    ) -> None:
        function = self._functions.get(function_identifier)
        if function is None:
            raise FunctionNotFound(f"Unable to find a Function with name '{function_identifier}'")
        context = self._context(function, tenant_id)
        started = time.monotonic()
        try:
            handler = self._borrow(function)
        except Exception as exc:  # an init failure fails the invocation, the next request retries
            LOG.exception("cannot load the handler of %s", function.name)
            error_type = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else None
            self._write(stdout, _lambda_error(exc, context.aws_request_id, error_type))
            return
        try:
            result = handler(json.loads(event), context)
        except (Exception, SystemExit) as exc:  # sys.exit() in a handler fails the invocation, not the server
            LOG.exception("handler of %s raised", function.name)
            error_type = "Runtime.ExitError" if isinstance(exc, SystemExit) else None
            result = _lambda_error(exc, context.aws_request_id, error_type)
        finally:
            with self._lock:
                self._idle[function.name].append(handler)
        if time.monotonic() - started > context.timeout_seconds:
            # Lambda would have killed it; a thread cannot be killed, so only say so.
            LOG.warning("%s ran longer than its %ss timeout", function.name, context.timeout_seconds)
        self._write(stdout, result, context.aws_request_id)

    @staticmethod
    def _write(stdout: StreamWriter | None, result: Any, request_id: str = "") -> None:
        if stdout is None:
            return
        if isinstance(result, bytes):  # the runtime passes bytes through untouched
            stdout.write_str(result.decode("utf-8", errors="replace"))
            return
        try:
            payload = json.dumps(result, default=_json_default)
        except (TypeError, ValueError) as exc:
            LOG.error("cannot marshal the handler result: %s", exc)
            payload = json.dumps(_lambda_error(exc, request_id, "Runtime.MarshalError"))
        stdout.write_str(payload)

    @staticmethod
    def _context(function: Function, tenant_id: str | None) -> LambdaContext:
        name = function.functionname
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return LambdaContext(
            function_name=name,
            memory_limit_in_mb=str(function.memory or 128),
            invoked_function_arn=f"arn:aws:lambda:{region}:{_ACCOUNT_ID}:function:{name}",
            timeout_seconds=float(function.timeout or 3),
            tenant_id=tenant_id,
        )

    def _borrow(self, function: Function) -> Handler:
        with self._lock:
            idle = self._idle.setdefault(function.name, [])
            if idle:
                return idle.pop()
            copy = next(self._copies)
        return self._load(function, copy)

    def _load(self, function: Function, copy: int) -> Handler:
        if not function.codeuri or not function.handler:
            raise FunctionNotFound(f"{function.name} has no local code (CodeUri/Handler)")
        folder = Path(function.codeuri).resolve()
        module_path, _, attribute = function.handler.rpartition(".")
        source = folder / (module_path.replace(".", "/") + ".py")
        # Every function has an app.py: a unique module name keeps them apart in sys.modules.
        module_name = f"_local_api_{function.name}_{module_path.replace('.', '_')}_{copy}"
        self._make_importable(folder)
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ImportError(f"Unable to import module '{module_path}': no file {source}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        LOG.info("loaded %s from %s (environment %d)", function.name, source, copy)
        return getattr(module, attribute)

    def _make_importable(self, folder: Path) -> None:
        """Lets a handler import its sibling modules, as /var/task is on sys.path in Lambda."""
        if str(folder) not in sys.path:
            # Appended, not prepended: in one shared process a sibling must not shadow a library.
            sys.path.append(str(folder))
        for sibling in folder.glob("*.py"):
            other = self._loaded_siblings.setdefault(sibling.stem, folder)
            if other != folder and sibling.stem != "app":
                LOG.warning("module %s exists in %s and %s: both functions get the first", sibling.stem, other, folder)


class _FreshRequestIdApigwService(LocalApigwService):
    """SAM's service, but with a new requestId and request time per request, as API Gateway gives.

    SAM freezes them at import time (default arguments of RequestContext, aws/aws-sam-cli#9279).
    """

    def _generate_lambda_event(self, flask_request: Any, route: Any, method: str, endpoint: str) -> dict:
        try:
            event = super()._generate_lambda_event(flask_request, route, method, endpoint)
        except UnicodeDecodeError:
            # A text body that is not UTF-8: SAM would answer 502, API Gateway hands the function
            # the text with U+FFFD for the bad bytes (and our handler then answers 400).
            text = flask_request.get_data().decode("utf-8", errors="replace")
            flask_request._cached_data = text.encode("utf-8")  # werkzeug's cache of the body
            event = super()._generate_lambda_event(flask_request, route, method, endpoint)
        context = event.get("requestContext") or {}
        now = datetime.now(UTC)
        if "requestId" in context:
            context["requestId"] = str(uuid.uuid4())
        if "requestTimeEpoch" in context:
            context["requestTimeEpoch"] = int(now.timestamp() * 1000)
        if "requestTime" in context:
            context["requestTime"] = now.strftime("%d/%b/%Y:%H:%M:%S +0000")
        return event


class _RequestLogHandler(WSGIRequestHandler):
    """One structured log line per request instead of werkzeug's access log."""

    def run_wsgi(self) -> None:
        self._started = time.perf_counter()
        super().run_wsgi()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        elapsed_ms = (time.perf_counter() - getattr(self, "_started", time.perf_counter())) * 1000
        fields = {
            "method": self.command,
            "path": self.path,
            "status": int(code) if str(code).isdigit() else code,
            "duration_ms": round(elapsed_ms, 1),
        }
        LOG.info("%s %s %s", self.command, self.path, code, extra={"fields": fields})


class LocalApi:
    """A bound (already listening) server; serve it in the foreground or in a background thread."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self._server = server
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self.url = f"http://{server.host}:{server.port}"

    def serve_forever(self, processes: int = 1) -> None:
        """Serve until interrupted. processes > 1 pre-forks that many servers on the one listening
        socket (the kernel spreads connections among them), so handlers use every core, as
        Lambda's separate execution environments would. Fork before starting any thread."""
        children = []
        for _ in range(processes - 1):
            pid = os.fork()
            if pid == 0:  # a child serves until it is interrupted or terminated, then leaves quietly
                try:
                    self._server.serve_forever()
                finally:
                    os._exit(0)
            children.append(pid)
        self._serving.set()
        try:
            self._server.serve_forever()  # werkzeug closes the socket when it returns
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)

    def start(self) -> LocalApi:
        # The socket listens since construction, so connections are accepted once the loop runs.
        self._thread = threading.Thread(target=self.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        self._serving.wait()
        return self

    def shutdown(self) -> None:
        if self._serving.is_set():
            self._server.shutdown()  # only valid while serve_forever runs: it would wait forever
        else:
            self._server.server_close()
        if self._thread:
            self._thread.join()


def _quiet_sam() -> None:
    # SAM logs e.g. "No Content-Type given" or "Lambda returned empty body!" at INFO/WARNING per request.
    logging.getLogger("samcli").setLevel(logging.ERROR)
    # Its request handler records a telemetry event per request and may post them to AWS: not ours to send.
    os.environ["SAM_CLI_TELEMETRY"] = "0"


def create_local_api(
    template_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    extra_routes: Mapping[str, Callable[..., Any]] | None = None,
) -> LocalApi:
    """Reads the template's Api routes and binds host:port (0 picks a free port; see `.url`).

    extra_routes: Flask rule -> view for GET routes that are not the API's (e.g. its documentation);
    the template's routes win where both match.
    """
    _quiet_sam()
    template = Path(template_path).resolve()
    with warnings.catch_warnings():  # SAM's template validation uses deprecated jsonschema APIs
        warnings.simplefilter("ignore", DeprecationWarning)
        stacks, _ = SamLocalStackProvider.get_stacks(str(template))
        # disable_authorizer: like `sam local start-api`, IAM auth is ignored and Lambda authorizers are not run.
        api = ApiProvider(stacks, cwd=str(template.parent), disable_authorizer=True).api
        functions = SamFunctionProvider(stacks)
    if not api.routes:
        raise NoApisDefined(f"No APIs available in {template}")
    runner = InProcessLambdaRunner(functions)
    service = _FreshRequestIdApigwService(api=api, lambda_runner=runner, port=port, host=host)  # type: ignore[arg-type]
    service.create()
    for rule, view in (extra_routes or {}).items():
        service._app.add_url_rule(rule, endpoint=f"extra {rule}", view_func=view, methods=["GET"])
    try:
        # SAM's own run() is unusable here: it blocks, installs a SIGTERM handler and cannot be stopped.
        server = make_server(host, port, service._app, threaded=True, request_handler=_RequestLogHandler)
    except SystemExit as exc:  # werkzeug exits the process when the port is taken
        raise OSError(f"cannot listen on {host}:{port}") from exc
    service.port = server.port  # the events' X-Forwarded-Port header, right even when port was 0
    for route in api.routes:
        LOG.info("route %s %s -> %s", ",".join(sorted(route.methods)), route.path, route.function_name)
    return LocalApi(server)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.local_api", description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="template.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8080")))
    args = parser.parse_args(argv)

    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    local_api = create_local_api(args.template, args.host, args.port)
    LOG.info("serving %s", local_api.url)
    local_api.serve_forever()


if __name__ == "__main__":
    main()
