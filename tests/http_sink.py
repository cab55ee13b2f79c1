"""A callback receiver on 127.0.0.1 for execution tests and benchmarks: records every request
(task id, attempt, arrival time) and answers what the test scripted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Arrival:
    task_id: int
    attempt: int
    at: float
    method: str
    body: bytes
    idempotency_key: str | None


# (task_id, attempt) -> HTTP status to answer; may block to simulate a slow receiver.
Responder = Callable[[int, int], int]


class HttpSink:
    def __init__(self, responder: Responder | None = None) -> None:
        self.arrivals: list[Arrival] = []
        self.responder: Responder = responder or (lambda _task, _attempt: 200)
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                task_id = int(self.headers.get("X-AT-Task-Id", "0"))
                attempt = int(self.headers.get("X-AT-Attempt", "0"))
                arrival = Arrival(task_id, attempt, time.time(), self.command, body,
                                  self.headers.get("Idempotency-Key"))
                with sink._lock:
                    sink.arrivals.append(arrival)
                status = sink.responder(task_id, attempt)
                reply = json.dumps({"ok": status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/callback"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def by_task(self) -> dict[int, list[Arrival]]:
        with self._lock:
            grouped: dict[int, list[Arrival]] = {}
            for arrival in self.arrivals:
                grouped.setdefault(arrival.task_id, []).append(arrival)
            return grouped
