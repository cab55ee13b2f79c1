"""A callback receiver on loopback for tests: records every request and answers what the test says.

    with HttpSink() as sink:                                  # 200 to everything
        ...; sink.by_task()[task_id]                          # arrivals of one task, in order
    with HttpSink(lambda arrival: 503 if arrival.attempt < 3 else 200) as sink: ...
    with HttpSink(tls_context=server_context) as sink: ...    # https, SNI names in sink.server_names

A responder gets each request as an Arrival and returns a status or a Reply (status, body,
headers); it may block, to play a slow receiver. Keep-alive as real receivers do; connections are
counted and can be closed as a server's idle timeout would. (devtools/bench/sink.py is the other
receiver: an asyncio process fast enough for benchmarks, without any of this.)
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Arrival:
    task_id: int  # X-AT-Task-Id, 0 when absent
    attempt: int  # X-AT-Attempt, 0 when absent
    at: float  # time.time() when the request arrived
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Arrival], "int | Reply"]


def _default_reply(arrival: Arrival) -> Reply:
    return Reply(200, json.dumps({"ok": True}).encode(), {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: HttpSink

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(): a reverse DNS lookup nobody needs here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 10
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK add 40 ms a response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sink._opened(self.connection)

    def finish(self) -> None:
        self.server.sink._closed(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        arrival = Arrival(
            int(self.headers.get("X-AT-Task-Id", "0")),
            int(self.headers.get("X-AT-Attempt", "0")),
            time.time(),
            self.command,
            self.path,
            dict(self.headers.items()),
            body,
        )
        reply = self.server.sink._answer(arrival)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass


class HttpSink:
    def __init__(
        self, responder: Responder | None = None, *, tls_context: ssl.SSLContext | None = None, ipv6: bool = False
    ) -> None:
        self.responder: Responder = responder or _default_reply
        self.arrivals: list[Arrival] = []
        self.server_names: list[str | None] = []  # TLS SNI seen
        self.connections_opened = 0
        self._open_connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = (_Server6 if ipv6 else _Server)(("::1" if ipv6 else "127.0.0.1", 0), _Handler)
        self._server.sink = self
        self.scheme = "http"
        if tls_context is not None:
            self.scheme = "https"
            tls_context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self._server.socket = tls_context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = self.url_for()

    def url_for(self, path: str = "/callback", host: str | None = None) -> str:
        host = host or ("[::1]" if self._server.address_family == socket.AF_INET6 else "127.0.0.1")
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> HttpSink:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self.close_idle_connections()
        self._server.server_close()

    def by_task(self) -> dict[int, list[Arrival]]:
        with self._lock:
            grouped: dict[int, list[Arrival]] = {}
            for arrival in self.arrivals:
                grouped.setdefault(arrival.task_id, []).append(arrival)
            return grouped

    def close_idle_connections(self) -> None:
        """What a server's keep-alive timeout does: closes the connections waiting for a next request."""
        with self._lock:
            sockets = list(self._open_connections)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while self._open_connections and time.monotonic() < deadline:
            time.sleep(0.01)

    def _answer(self, arrival: Arrival) -> Reply:
        with self._lock:
            self.arrivals.append(arrival)
        reply = self.responder(arrival)
        return (
            reply
            if isinstance(reply, Reply)
            else Reply(reply, json.dumps({"ok": reply < 300}).encode(), {"Content-Type": "application/json"})
        )

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections_opened += 1
            self._open_connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open_connections.discard(connection)
