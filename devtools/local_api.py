"""A Docker-free `sam local start-api`: SAM CLI's own API Gateway emulation, handlers run in-process.

The SAM CLI reads the routes (ApiProvider) and the functions (SamFunctionProvider) from template.yaml,
and its LocalApigwService (a Flask app) turns each HTTP request into the REST API (payload 1.0)
proxy event and each handler result back into an HTTP response, exactly as `sam local start-api`
does (except that requestId and requestTime are fresh per request, as on AWS). Only the Lambda
runner is ours: instead of a Docker container per invocation it calls the function's handler,
imported once per process.

Each server process is one Lambda execution environment: it answers one request at a time (a
single-threaded werkzeug server, gunicorn-sync style). Handler code keeps per-invocation state in
process-wide places (Powertools' resolver keeps the current event on a class), so invocations must
never share a process concurrently; concurrency comes from pre-forked processes accepting on one
listening socket (the kernel hands each connection to one waiting process).

Only requests addressed to this machine's local names are answered, and never cross-site ones
from a browser: see _LocalRequestsOnly.

    python -m devtools.local_api [--template template.yaml] [--host 127.0.0.1] [--port 8080]
                                 [--processes N] [--allowed-host NAME ...]

The caller owns the process: the layer (layers/common/python) must already be on sys.path and the
environment (DB_HOST, ...) already set; the template's Environment variables are NOT applied.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
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

from devtools.lambda_env import LambdaContext
from devtools.lifetime import die_with_parent

LOG = logging.getLogger("devtools.local_api")  # not __main__ under python -m

Handler = Callable[[dict[str, Any], Any], Any]

_ACCOUNT_ID = "123456789012"  # SAM's fake account id, also used in the events it builds
_REFUSED = "local_api.refused"  # the WSGI environ key of why _LocalRequestsOnly refused a request


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

    This process is one execution environment: each function's handler module is imported once,
    kept for the next invocation (a warm start), and invocations run one at a time. Handler
    modules keep per-invocation state process-wide (Powertools' resolver keeps the current event
    on a class, shared by every module copy), so two at once would answer each other's requests.
    """

    def __init__(self, functions: SamFunctionProvider) -> None:
        self._functions = functions
        self._handlers: dict[str, Handler] = {}
        self._one_at_a_time = threading.Lock()  # the server is single-threaded; this makes it a rule
        self._loaded_siblings: dict[str, Path] = {}  # sibling module name -> folder, to warn on clashes

    def is_debugging(self) -> bool:
        return False  # LocalApigwService asks

    def preload(self, function_names: Iterable[str]) -> None:
        """Import these functions' handlers now, e.g. before forking so that every process shares
        them. One that fails is left to fail (and be retried) at its invocations, as an init would."""
        for name in function_names:
            function = self._functions.get(name)
            if function is None:
                continue
            try:
                self._handler(function)
            except Exception:
                LOG.warning("cannot load the handler of %s (each invocation will try again)", name, exc_info=True)

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
        with self._one_at_a_time:
            context = self._context(function, tenant_id)
            self._write(stdout, *self._run(function, json.loads(event), context))

    def _run(self, function: Function, event: dict[str, Any], context: LambdaContext) -> tuple[Any, str]:
        started = time.monotonic()
        try:
            handler = self._handler(function)
        except Exception as exc:  # an init failure fails the invocation, the next one retries
            LOG.exception("cannot load the handler of %s", function.name)
            error_type = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else None
            return _lambda_error(exc, context.aws_request_id, error_type), context.aws_request_id
        try:
            result = handler(event, context)
        except (Exception, SystemExit) as exc:  # sys.exit() in a handler fails the invocation, not the server
            LOG.exception("handler of %s raised", function.name)
            error_type = "Runtime.ExitError" if isinstance(exc, SystemExit) else None
            result = _lambda_error(exc, context.aws_request_id, error_type)
        if time.monotonic() - started > context.timeout_seconds:
            # Lambda would have stopped it; here it only says so.
            LOG.warning("%s ran longer than its %ss timeout", function.name, context.timeout_seconds)
        return result, context.aws_request_id

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

    def _handler(self, function: Function) -> Handler:
        handler = self._handlers.get(function.name)
        if handler is None:
            handler = self._handlers[function.name] = self._load(function)
        return handler

    def _load(self, function: Function) -> Handler:
        if not function.codeuri or not function.handler:
            raise FunctionNotFound(f"{function.name} has no local code (CodeUri/Handler)")
        folder = Path(function.codeuri).resolve()
        module_path, _, attribute = function.handler.rpartition(".")
        source = folder / (module_path.replace(".", "/") + ".py")
        # Every function has an app.py: a unique module name keeps them apart in sys.modules.
        module_name = f"_local_api_{function.name}_{module_path.replace('.', '_')}"
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
        LOG.debug("loaded %s from %s", function.name, source)
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
    """One structured log line per request instead of werkzeug's access log.

    HTTP/1.0: one request per connection, so an idle keep-alive connection never holds one of
    the single-request processes; and a client that stalls for `timeout` seconds is let go.
    """

    protocol_version = "HTTP/1.0"
    timeout = 30

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
        refused = getattr(self, "environ", {}).get(_REFUSED)
        if refused:
            fields["refused"] = refused
        LOG.log(logging.WARNING if refused else logging.INFO, "%s %s %s", self.command, self.path, code, extra=fields)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_ALL_INTERFACES = {"", "0.0.0.0", "::"}
_HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::([0-9]*))?")


def _host_name(host: str) -> str:
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names a request may address this server by: the loopback names, the address it is
    bound to (unless that is every interface: then only the names in extra are added)."""
    names = [*LOOPBACK_NAMES]
    if bind_host.strip("[]") not in _ALL_INTERFACES:
        names.append(_host_name(bind_host))
    names += [_host_name(name) for name in extra]
    return list(dict.fromkeys(names))


class _LocalRequestsOnly:
    """WSGI middleware: answers 403 {"error": ...} to requests the local run must not serve.

    The local run creates tasks that call loopback, private and metadata addresses; any web page
    could otherwise make a visitor's browser create them: a "simple" cross-site POST (the body is
    read as JSON whatever its Content-Type) or DNS rebinding (a page of evil.example whose name
    now resolves to 127.0.0.1). So a request must be addressed (Host) to one of `names`, with
    this port or none, and a browser request (one with Origin or Sec-Fetch-* headers) must come
    from this server's own origin and send any body as JSON. A client without those headers
    (curl, scripts) is not a browser and may send any Content-Type (curl -d sends a form's).
    """

    def __init__(self, app: Callable[..., Any], names: Iterable[str], port: int) -> None:
        self._app = app
        self._names = frozenset(names)
        self._port = port
        self._origins = {f"http://{name}:{port}" for name in self._names}
        if port == 80:
            self._origins |= {f"http://{name}" for name in self._names}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        reason = self._refusal(environ)
        if reason is None:
            return self._app(environ, start_response)
        environ[_REFUSED] = reason  # for the request's log line
        body = json.dumps({"error": reason}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _refusal(self, environ: dict[str, Any]) -> str | None:
        host = environ.get("HTTP_HOST")
        if host is not None and not self._is_local(host):
            return (
                f"Host {host!r} is not this local run's: it answers only requests addressed to "
                f"{', '.join(sorted(self._names))} (port {self._port})"
            )
        site = environ.get("HTTP_SEC_FETCH_SITE", "").lower()
        if site in ("cross-site", "same-site"):
            return f"cross-site request refused (Sec-Fetch-Site: {site}): use the local run from its own pages or curl"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin.lower() not in self._origins:
            return f"cross-origin request refused: Origin {origin!r} is not this local run's"
        browser = origin is not None or any(key.startswith("HTTP_SEC_FETCH_") for key in environ)
        content_type = environ.get("CONTENT_TYPE", "")
        has_body = environ.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ
        if browser and (content_type or has_body) and not _is_json(content_type):
            return f"a browser request must send its body as application/json, not {content_type or 'untyped'}"
        return None

    def _is_local(self, host: str) -> bool:
        match = _HOST_HEADER.fullmatch(host.strip().lower())
        if match is None or match.group(1) not in self._names:
            return False
        return not match.group(2) or int(match.group(2)) == self._port


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class _Stop(BaseException):
    """Raised by a stop signal in a server process waiting for a connection."""


class LocalApi:
    """A bound (already listening) server; serve it in the foreground or in a background thread."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self._server = server
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self.url = f"http://{_host_name(server.host)}:{server.port}"

    def serve_forever(self, processes: int = 1) -> None:
        """Serve until interrupted (KeyboardInterrupt; make SIGTERM raise it too), one request at a
        time per process. processes == 1 serves in this process (stoppable by shutdown()); more
        pre-forks that many server processes on the one listening socket, replaces any that dies
        and stops them all on the way out. Fork before starting any thread."""
        if processes <= 1:
            self._serving.set()
            self._server.serve_forever()  # werkzeug closes the socket when it returns
            return
        children: dict[int, float] = {}  # pid -> when it started
        LOG.info("serving %s with %d processes, one request at a time each", self.url, processes)
        try:
            while True:
                while len(children) < processes:
                    children[self._fork_server()] = time.monotonic()
                time.sleep(0.5)  # os.wait() would also reap the caller's other children (the engines)
                for pid, started in list(children.items()):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        del children[pid]
                        LOG.warning("API process %d exited; starting another", pid)
                        if time.monotonic() - started < 1:
                            time.sleep(1)  # not a busy loop if it dies at once
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # each finishes the request it is answering
            for pid in children:
                os.waitpid(pid, 0)
            self._server.server_close()

    def _fork_server(self) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            die_with_parent(parent)
            self._serve_one_at_a_time()
            code = 0
        except BaseException:
            LOG.exception("API process %d failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # never return into the caller's stack (its finally would stop the run)

    def _serve_one_at_a_time(self) -> None:
        """A forked server process: accept one connection, answer it, repeat, until SIGTERM.

        A blocking accept() on the shared socket: the kernel wakes one waiting process per
        connection, so connections go to idle processes only. SIGTERM while answering lets the
        answer finish. SIGINT (Ctrl+C reaches the whole process group) is the parent's to act
        on: it stops every process with SIGTERM, none is restarted on the way."""
        busy = stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True
            if not busy:
                raise _Stop

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server = self._server
        try:
            while not stopping:
                try:
                    connection, address = server.socket.accept()
                except ConnectionAbortedError:  # the client left before it was accepted
                    continue
                busy = True
                try:
                    server.finish_request(connection, address)
                except Exception:
                    LOG.exception("cannot answer %s", address)  # in JSON, not socketserver's traceback print
                finally:
                    server.shutdown_request(connection)
                    busy = False
        except _Stop:
            pass

    def start(self) -> LocalApi:
        """Serve in a background thread of this process (one request at a time)."""
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


def default_processes() -> int:
    """Server processes when not told: more than cores, as handlers also wait on the database;
    not many more, as each one busy at once costs CPU per request (caches, switches)."""
    return 3 * (os.cpu_count() or 1)


def create_local_api(
    template_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    extra_routes: Mapping[str, Callable[..., Any]] | None = None,
    allowed_hosts: Iterable[str] = (),
) -> LocalApi:
    """Reads the template's Api routes, imports their handlers and binds host:port (0 picks a free
    port; see `.url`). Requests must address it by a name of allowed_host_names(host, allowed_hosts).

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
    runner.preload(dict.fromkeys(route.function_name for route in api.routes))
    service = _FreshRequestIdApigwService(api=api, lambda_runner=runner, port=port, host=host)
    service.create()
    for rule, view in (extra_routes or {}).items():
        service._app.add_url_rule(rule, endpoint=f"extra {rule}", view_func=view, methods=["GET"])
    try:
        # SAM's own run() is unusable here: it blocks, installs a SIGTERM handler and cannot be stopped.
        server = make_server(host, port, service._app, request_handler=_RequestLogHandler)
    except SystemExit as exc:  # werkzeug exits the process when the port is taken
        raise OSError(f"cannot listen on {host}:{port}") from exc
    service.port = server.port  # the events' X-Forwarded-Port header, right even when port was 0
    server.app = _LocalRequestsOnly(service._app, allowed_host_names(host, allowed_hosts), server.port)
    for route in api.routes:
        LOG.info("route %s %s -> %s", ",".join(sorted(route.methods)), route.path, route.function_name)
    return LocalApi(server)


def configure_logging(level: str | int = "INFO", service: str = "local-api") -> None:
    """The standard library's log as JSON lines on stdout, shaped like the functions' Powertools
    lines (which go to stdout too), so the console is one structured log."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LambdaPowertoolsFormatter(service=service))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.local_api", description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="template.yaml")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 or :: listens on every interface")
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8080")))
    parser.add_argument("--processes", type=int, default=int(os.environ.get("AT_API_PROCESSES") or default_processes()))
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name or address clients use in Host (e.g. this machine's LAN address)",
    )
    args = parser.parse_args(argv)

    configure_logging()
    local_api = create_local_api(args.template, args.host, args.port, allowed_hosts=args.allowed_host)
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        local_api.serve_forever(args.processes)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as cleanly as Ctrl+C


if __name__ == "__main__":
    main()
