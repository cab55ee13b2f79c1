"""Hostile callback receivers on 127.0.0.x for executor tests: servers that drip, stall, flood or
never answer. Threads on loopback, like http_sink.py; nothing leaves the machine.

Each behaviour gets the accepted connection and an Event set when the server stops; it must return
soon after that. A server stops at the end of its `with` block or after HostileServer.max_seconds,
whichever comes first, so even code that ignores its deadline (what these servers are for) ends its
test in bounded time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Behaviour = Callable[[socket.socket, threading.Event], None]

DRIP_INTERVAL = 0.25  # seconds between two dripped pieces


def read_request_head(conn: socket.socket) -> bytes:
    """The request line and headers (the body, if any, is left unread)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


def drip_headers(conn: socket.socket, stop: threading.Event) -> None:
    """A status line, then one more header line every DRIP_INTERVAL, never the blank line."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while not stop.wait(DRIP_INTERVAL):
        n += 1
        conn.sendall(b"X-Drip-%d: y\r\n" % n)


def drip_status_line(conn: socket.socket, stop: threading.Event) -> None:
    """The status line itself, one byte every DRIP_INTERVAL."""
    read_request_head(conn)
    for byte in b"HTTP/1.1 200 OK" + b"K" * 1000:
        if stop.wait(DRIP_INTERVAL):
            return
        conn.sendall(bytes([byte]))


def drip_body(conn: socket.socket, stop: threading.Event) -> None:
    """Complete headers announcing 100,000 bytes, then one body byte every DRIP_INTERVAL."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(DRIP_INTERVAL):
        conn.sendall(b"x")


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accepts and never says a word (as a TLS server: a handshake that never completes)."""
    stop.wait()


def flood(status: int) -> Behaviour:
    """Answers `status` with a 64 MiB body: sends the first MiB at once, then stalls on the rest.

    A client that reads more than its cap waits for bytes that never come."""

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 %d Flood\r\nContent-Length: %d\r\n\r\n" % (status, 64 * 1024 * 1024))
        try:
            conn.sendall(b"<flood>" + b"F" * (1024 * 1024))
        except OSError:
            return  # the client hung up after reading what it wanted: what we hope for
        stop.wait()

    return behaviour


def redirect(location: str) -> Behaviour:
    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location.encode())
        stop.wait()

    return behaviour


class HostileServer:
    """Listens on host:port (port 0: any) and runs `behaviour` for each connection, in its own thread."""

    max_seconds = 15.0

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self._stop = threading.Event()
        self._timer = threading.Timer(self.max_seconds, self._stop.set)
        self._timer.daemon = True
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.05)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, path: str = "/hook", scheme: str = "http", host: str | None = None) -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.behaviour(conn, self._stop)
            except OSError:
                pass  # the client went away


class BlackHole:
    """A listening address whose SYNs go unanswered: its accept queue (backlog 0) is kept full and
    nothing is ever accepted, so a connect() to it hangs until the client's own timeout."""

    def __init__(self, host: str, port: int) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(0)
        self._filler = socket.create_connection((host, port), timeout=2)  # takes the one queue slot

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self._filler.close()
        self._listener.close()
