"""moto in server mode, counting the requests it answers by action (what SQS would bill).

    python -m devtools.moto_sqs --port 5000      # GET /_at/requests → {"SendMessageBatch": 12, ...}

The AWS topology (devtools.aws_topology) runs it in a process of its own, so the emulator never
shares a GIL with the event source mapping or the functions it serves.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

COUNTS_PATH = "/_at/requests"


def _speed_up_moto() -> None:
    """moto checks each message it hands out against the queue's retention period by computing
    every queue attribute three times, each a scan of all messages (moto 5.2): with hundreds in
    flight that made the emulator, not AT, the limit of the benchmarks. Read the one attribute."""
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Any) -> bool:
        retention_seconds = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
        return retention_seconds + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


class CountingApp:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == COUNTS_PATH:
            with self._lock:
                body = json.dumps(dict(self._counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        action = self._action(environ)
        if action:
            with self._lock:
                self._counts[action] += 1
        return self._app(environ, start_response)

    @staticmethod
    def _action(environ: dict[str, Any]) -> str | None:
        target = environ.get("HTTP_X_AMZ_TARGET")  # the JSON protocol: "AmazonSQS.SendMessageBatch"
        if target:
            return target.rpartition(".")[2]
        query = parse_qs(environ.get("QUERY_STRING", ""))  # the query protocol: Action=...
        return query.get("Action", [None])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _speed_up_moto()
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    main()
